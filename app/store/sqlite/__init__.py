"""The embedded engine: one SQLite file, one relay process (`engine.py`, `writer.py`)."""
