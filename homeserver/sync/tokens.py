"""Pagination and stream tokens: the opaque strings clients hand back to us.

Two kinds, both accepted wherever a room's history is paginated:

- A stream token, `s<events>[_<other streams>...]`: a position in every
  stream a client syncs (`next_batch`/`prev_batch`). Today it carries the
  room-event stream ordering only; /sync appends its other streams as new
  fields of `StreamToken` (with defaults, so tokens already handed out
  still parse).
- A topological token, `t<topological_ordering>-<stream_ordering>`: a
  position in one room's history, which is ordered by (depth, stream
  ordering). /messages and /context hand these out.

A token names a gap between events: the one just after the event at its
position. Paginating backwards from it returns that event first; forwards,
the event after it.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

# Positions are BIGINT columns: anything larger cannot name a real event,
# and must not reach the database.
MAX_POSITION = 2**63 - 1
_NUMBER = re.compile(r"[0-9]{1,19}")


class InvalidToken(ValueError):
    """The string is not a token this server hands out."""


def _position(text: str) -> int:
    if not _NUMBER.fullmatch(text):
        raise InvalidToken(f"not a position: {text!r}")
    value = int(text)
    if value > MAX_POSITION:
        raise InvalidToken(f"position out of range: {text!r}")
    return value


@dataclass(frozen=True, order=True)
class TopologicalToken:
    """The gap just after the event at (topological, stream) in a room's history."""

    topological: int
    stream: int

    def __str__(self) -> str:
        return f"t{self.topological}-{self.stream}"

    @classmethod
    def parse(cls, value: str) -> TopologicalToken:
        if not value.startswith("t"):
            raise InvalidToken(f"not a topological token: {value!r}")
        topological, sep, stream = value[1:].partition("-")
        if not sep:
            raise InvalidToken(f"not a topological token: {value!r}")
        return cls(_position(topological), _position(stream))

    @property
    def key(self) -> tuple[int, int]:
        """The (topological_ordering, stream_ordering) the gap follows."""
        return (self.topological, self.stream)


@dataclass(frozen=True)
class StreamToken:
    """A position in each stream a client syncs (see storage/streams.py).

    Fields are serialized in declaration order, `_`-separated; new streams
    are appended with a default of 0 so shorter (older) tokens still parse.
    """

    events: int
    receipts: int = 0
    typing: int = 0
    account_data: int = 0
    presence: int = 0
    to_device: int = 0
    device_lists: int = 0

    @classmethod
    def stream_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    def copy_and_advance(self, other: StreamToken) -> StreamToken:
        """The later of the two positions in every stream."""
        return StreamToken(
            **{n: max(getattr(self, n), getattr(other, n)) for n in self.stream_names()}
        )

    def __str__(self) -> str:
        values = [getattr(self, name) for name in self.stream_names()]
        while len(values) > 1 and values[-1] == 0:
            values.pop()  # trailing zeros are the defaults: shorter tokens
        return "s" + "_".join(map(str, values))

    @classmethod
    def parse(cls, value: str) -> StreamToken:
        if not value.startswith("s"):
            raise InvalidToken(f"not a stream token: {value!r}")
        parts = value[1:].split("_")
        fields = dataclasses.fields(cls)
        required = sum(1 for f in fields if f.default is dataclasses.MISSING)
        if not required <= len(parts) <= len(fields):
            raise InvalidToken(f"not a stream token: {value!r}")
        return cls(**{f.name: _position(p) for f, p in zip(fields, parts)})


PaginationToken = StreamToken | TopologicalToken


def parse_pagination_token(value: str) -> PaginationToken:
    """A `from`/`to`/`at` token: either kind, or a sliding sync `pos`
    (`<position ID>.<stream token>`, MSC4186). Raises InvalidToken."""
    if value.startswith("t"):
        return TopologicalToken.parse(value)
    position, dot, stream = value.partition(".")
    if dot and position.isdigit():
        return StreamToken.parse(stream)
    return StreamToken.parse(value)
