"""Server-server side: the server's identity (signing keys) and the federation API."""
