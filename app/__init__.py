"""userpilot-relay: the one place a company's systems talk to Userpilot through."""

__version__ = "0.1.0"
