"""adfm.plant: every station's results in PostgreSQL, a plant view in the browser, labels for training.

A plant server, not a line PC: it follows stations through the bus client; nothing on the line
imports it.
"""
