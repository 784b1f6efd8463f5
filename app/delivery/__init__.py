"""Delivery: the dispatcher that takes stored updates to Userpilot, paced, merged, retried."""
