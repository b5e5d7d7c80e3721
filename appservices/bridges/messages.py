"""What a hook payload becomes: a Matrix message, plain text and HTML."""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from typing import Any


class PayloadError(ValueError):
    """A payload the hook cannot post; the message says what is wrong (answered 400)."""


@dataclass
class Message:
    """A rendered message, and how it relates to earlier ones.

    `reply_to` names earlier messages (by key) this one answers: the first
    of them the bridge has posted becomes its `m.in_reply_to`. Once sent,
    the message is remembered under each `remember_as` key not already
    taken, and the `forget` keys are dropped (an alert episode is over).
    """

    body: str
    html: str
    msgtype: str = "m.text"
    reply_to: list[str] = field(default_factory=list)
    remember_as: list[str] = field(default_factory=list)
    forget: list[str] = field(default_factory=list)

    def content(self, in_reply_to: str | None = None) -> dict[str, Any]:
        content: dict[str, Any] = {
            "msgtype": self.msgtype,
            "body": self.body,
            "format": "org.matrix.custom.html",
            "formatted_body": self.html,
        }
        if in_reply_to is not None:
            content["m.relates_to"] = {"m.in_reply_to": {"event_id": in_reply_to}}
        return content


def escape(text: str) -> str:
    """Text as HTML, quotes included: safe in element content and in quoted attribute values
    (an operator's HTML template may put a field in `href="..."`)."""
    return html.escape(text, quote=True)


_URL = re.compile(r"https?://[^\s<>\"]+[^\s<>\".,;:!?)\]}']")


def text_to_html(text: str) -> str:
    """Plain text as HTML: escaped, line breaks kept, http(s) URLs made links."""
    out: list[str] = []
    pos = 0
    for m in _URL.finditer(text):
        out.append(escape(text[pos : m.start()]))
        out.append(link(m.group(0)))
        pos = m.end()
    out.append(escape(text[pos:]))
    return "".join(out).replace("\n", "<br>")


def link(url: str, label: str | None = None) -> str:
    """An <a> for http(s) and mailto URLs; anything else is shown as text."""
    label = url if label is None else label
    if url.startswith(("http://", "https://", "mailto:")):
        return f'<a href="{escape(url)}">{escape(label)}</a>'
    return escape(label)


def expect(value: Any, kind: type | tuple[type, ...], where: str, *, required: bool = False) -> Any:
    """`value` if it has the JSON type `kind` (None when absent and not required)."""
    if value is None:
        if required:
            raise PayloadError(f"{where}: required")
        return None
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise PayloadError(f"{where}: expected {_kind_name(kind)}")
    if not isinstance(value, kind):
        raise PayloadError(f"{where}: expected {_kind_name(kind)}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {str: "a string", dict: "an object", list: "an array", int: "a number", float: "a number", bool: "true or false"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(dict.fromkeys(names.get(k, k.__name__) for k in kinds))
