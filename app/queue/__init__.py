"""Durable delivery: the store interface, its SQLite and PostgreSQL backends, the dispatcher."""
