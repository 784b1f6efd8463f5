"""The shared engine: PostgreSQL, for several relay replicas behind one queue.

- `engine.py`: the pool, running plans (retried once on a fresh connection), shared pacing.
- `connection.py`: the URL as libpq parameters, error classes, the database clock offset.
- `listen.py`: `LISTEN/NOTIFY`, so one replica's new work wakes every dispatcher.
"""
