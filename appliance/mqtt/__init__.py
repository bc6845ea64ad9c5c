"""MQTT out: the station's results, revisions, state and alarms on the plant's broker (the `mqtt` extra)."""
