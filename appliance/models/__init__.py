"""Models on the station: the store, shadow runs, their comparison, promotion and rollback."""
