"""Room versions this server can create and join."""

SUPPORTED_ROOM_VERSIONS = ("10", "11", "12")
DEFAULT_ROOM_VERSION = "12"
