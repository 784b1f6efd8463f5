"""Durable storage: the `Store` interface, the SQL both backends run, and the two backends.

`connect.open_store` picks the backend from the database URL; nothing else knows which runs.
"""
