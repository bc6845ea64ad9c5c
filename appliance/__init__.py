"""adfm.appliance: the line PC's inspection service and its operator dashboard. No torch here."""
