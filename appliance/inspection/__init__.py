"""The inspection core shared by every mode: image → gate → VLM → parsed answer → one result."""
