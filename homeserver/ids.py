"""Matrix identifiers: user IDs and their grammar (appendices: identifier grammar)."""

from __future__ import annotations

import re

from .errors import MatrixError

# Localparts of new users: the spec's historical-free grammar.
_LOCALPART = re.compile(r"^[a-z0-9._=\-/+]+$")
MAX_USER_ID_LENGTH = 255


def user_id(localpart: str, server_name: str) -> str:
    return f"@{localpart}:{server_name}"


def split_user_id(uid: str) -> tuple[str, str] | None:
    """(localpart, server_name) of a well-formed user ID, else None."""
    if not uid.startswith("@") or ":" not in uid or len(uid) > MAX_USER_ID_LENGTH:
        return None
    localpart, _, server = uid[1:].partition(":")
    if not localpart or not server:
        return None
    return localpart, server


def check_new_localpart(localpart: str, server_name: str, *, appservice: bool = False) -> None:
    """Refuse localparts a new account may not have (M_INVALID_USERNAME).

    A leading '_' is left to application services, whose namespaces use it.
    """
    if not localpart:
        raise MatrixError(400, "M_INVALID_USERNAME", "User ID cannot be empty")
    if not _LOCALPART.match(localpart):
        raise MatrixError(
            400,
            "M_INVALID_USERNAME",
            "User ID can only contain characters a-z, 0-9, or '=_-./+'",
        )
    if localpart.startswith("_") and not appservice:
        raise MatrixError(400, "M_INVALID_USERNAME", "User ID may not begin with '_'")
    if localpart.isdigit():
        raise MatrixError(400, "M_INVALID_USERNAME", "Numeric user IDs are reserved for guests")
    if len(user_id(localpart, server_name)) > MAX_USER_ID_LENGTH:
        raise MatrixError(
            400, "M_INVALID_USERNAME", f"User ID may not be longer than {MAX_USER_ID_LENGTH} characters"
        )
