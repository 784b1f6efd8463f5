"""Durable storage: `Store` (`store.py`) is one engine (`engine.py`; `sqlite/`, `postgres/`)
plus one module per feature, each holding its SQL, its plans and its methods.

`store.open_store` picks the engine from the database URL; nothing else knows which runs.
"""
