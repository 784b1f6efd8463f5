"""The embedded store: one SQLite file, one relay process (`store.py`, `writer.py`)."""
