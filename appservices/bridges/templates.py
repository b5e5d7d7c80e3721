"""Templates an operator writes in the config: `"New lead: {name}, {company.name}"`.

`str.format` syntax, with fields looked up as paths into JSON data
(`{deal.amount}`, `{items.0.sku}` or `{items[0].sku}`) and nothing else: no
attribute access on Python objects, whatever the template says. Format specs
(`{amount:,.2f}`) are the template's own: a field inside one (`{x:{w}}`)
would take the spec from the data, so it is refused, and so is a width or
precision above MAX_WIDTH. Every missing field is reported at once, so a
caller learns all it left out.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Callable, Mapping
from typing import Any

_INDEX = re.compile(r"\[([^\]]*)\]")
_NUMBER = re.compile(r"\d+")
# The largest width or precision a format spec may ask for.
MAX_WIDTH = 1000


class TemplateError(ValueError):
    """The data does not fit the template; the message says which field and why."""

    def __init__(self, message: str, missing: list[str] | None = None) -> None:
        super().__init__(message)
        self.missing = missing or []


_MISSING = object()


def lookup(data: Any, path: str) -> Any:
    """The value at a dotted path into JSON data, or `_MISSING`."""
    value = data
    for part in _INDEX.sub(r".\1", path).split("."):
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.lstrip("-").isdigit() and -len(value) <= int(part) < len(value):
            value = value[int(part)]
        else:
            return _MISSING
    return value


def display(value: Any) -> str:
    """How a JSON value reads in a message."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


class _Formatter(string.Formatter):
    def __init__(self, escape: Callable[[str], str] | None) -> None:
        self.escape = escape

    def get_field(self, field_name: str, args: Any, kwargs: Any) -> Any:
        value = lookup(kwargs["data"], field_name)
        if value is _MISSING:
            raise TemplateError(f"missing field: {field_name}", [field_name])
        return value, field_name

    def convert_field(self, value: Any, conversion: str | None) -> Any:
        # !r, !s and !a would show Python reprs; only plain values are shown.
        return value

    def format_field(self, value: Any, format_spec: str) -> str:
        if format_spec:
            try:
                text = format(value, format_spec)
            except (ValueError, TypeError):
                raise TemplateError(f"cannot format {display(value)!r} with '{format_spec}'") from None
        else:
            text = display(value)
        return self.escape(text) if self.escape else text


def fields(template: str) -> list[str]:
    """The field paths a template uses, in order."""
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


def check(template: str) -> None:
    """Refuse format specs with a field in them or a width or precision above MAX_WIDTH
    (TemplateError); a template `str.format` cannot parse raises ValueError."""
    for _, name, spec, _ in string.Formatter().parse(template):
        if not spec:
            continue
        if "{" in spec or "}" in spec:
            raise TemplateError(f"{{{name}:{spec}}}: a format spec cannot contain a field")
        for number in _NUMBER.findall(spec):
            digits = number.lstrip("0")
            if len(digits) > len(str(MAX_WIDTH)) or int(digits or "0") > MAX_WIDTH:
                raise TemplateError(f"{{{name}:{spec}}}: a width or precision is at most {MAX_WIDTH}")


def render(template: str, data: Any, *, escape: Callable[[str], str] | None = None) -> str:
    """Fill the template from `data`; `escape` is applied to every value (not to the template)."""
    check(template)
    missing = [name for name in dict.fromkeys(fields(template)) if lookup(data, name) is _MISSING]
    if missing:
        raise TemplateError("missing " + ("fields: " if len(missing) > 1 else "field: ") + ", ".join(missing), missing)
    return _Formatter(escape).vformat(template, (), {"data": data})
