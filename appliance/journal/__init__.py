"""The journal: SQLite (WAL) rows and image files, the station's source of truth, and its repair."""
