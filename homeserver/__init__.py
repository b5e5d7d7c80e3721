"""A Matrix homeserver for corporate chat: the server core and the client-server API."""

__version__ = "0.1.0"
