"""The headers media is served with, so a browser never runs what users uploaded.

As Synapse does: `Content-Disposition: inline` only for content types that
cannot script (the spec's list; no SVG, no HTML), `attachment` otherwise; a
sandboxing Content-Security-Policy; `nosniff`, so the declared type is the
one used; and `Cross-Origin-Resource-Policy: cross-origin` for web clients.
"""

from __future__ import annotations

import re
from urllib.parse import quote

# The spec's "Serving inline content" list, which is Synapse's INLINE_CONTENT_TYPES.
INLINE_CONTENT_TYPES = frozenset(
    {
        "text/css",
        "text/plain",
        "text/csv",
        "application/json",
        "application/ld+json",
        "image/jpeg",
        "image/gif",
        "image/png",
        "image/apng",
        "image/webp",
        "image/avif",
        "video/mp4",
        "video/webm",
        "video/ogg",
        "video/quicktime",
        "audio/mp4",
        "audio/webm",
        "audio/aac",
        "audio/mpeg",
        "audio/ogg",
        "audio/wave",
        "audio/wav",
        "audio/x-wav",
        "audio/x-pn-wav",
        "audio/flac",
        "audio/x-flac",
    }
)

CONTENT_SECURITY_POLICY = (
    "sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf;"
    " style-src 'unsafe-inline'; media-src 'self'; object-src 'self';"
)

# RFC 7230 token characters (less % and ', which some browsers decode):
# such a filename is sent as it is, any other percent-encoded as UTF-8.
_TOKEN = re.compile(r"[!#$&*+\-.^_`|~0-9A-Za-z]+")

# type "/" subtype [";" parameters], printable ASCII: what may be sent back as Content-Type.
_CONTENT_TYPE = re.compile(r"[A-Za-z0-9!#$&^_.+\-]+/[A-Za-z0-9!#$&^_.+\-]+(?:\s*;[\x20-\x7e]*)?")
MAX_CONTENT_TYPE_LENGTH = 255


def is_valid_content_type(value: str) -> bool:
    return len(value) <= MAX_CONTENT_TYPE_LENGTH and _CONTENT_TYPE.fullmatch(value) is not None


def base_type(content_type: str) -> str:
    """`image/png` of `Image/PNG; charset=x`."""
    return content_type.split(";", 1)[0].strip().lower()


def content_disposition(content_type: str, filename: str | None) -> str:
    disposition = "inline" if base_type(content_type) in INLINE_CONTENT_TYPES else "attachment"
    if not filename:
        return disposition
    if _TOKEN.fullmatch(filename):
        return f"{disposition}; filename={filename}"
    return f"{disposition}; filename*=utf-8''{quote(filename, safe='')}"


def media_headers(content_type: str, filename: str | None) -> dict[str, str]:
    if base_type(content_type).startswith("text/") and "charset" not in content_type.lower():
        content_type = f"{content_type}; charset=UTF-8"
    return {
        "Content-Type": content_type,
        "Content-Disposition": content_disposition(content_type, filename),
        "Content-Security-Policy": CONTENT_SECURITY_POLICY,
        "X-Content-Type-Options": "nosniff",
        "Cross-Origin-Resource-Policy": "cross-origin",
        # The bytes behind a media ID never change.
        "Cache-Control": "private, max-age=86400",
    }
