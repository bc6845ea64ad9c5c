"""How parts reach the inspection core: free-run (frames as they come) and line (triggers, deadlines)."""
