"""The default mapping files, one per source (JSON)."""
