"""The one client of Userpilot's HTTP API."""
