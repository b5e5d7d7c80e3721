"""Slack-compatible incoming webhooks: `text` in mrkdwn, legacy `attachments`, Block Kit `blocks`.

Any tool that can post to a Slack incoming-webhook URL (CI servers, Jira,
Sentry, GitLab, scripts with curl) posts here unchanged. mrkdwn is Slack's
own markup: `*bold*`, `_italic_`, `~strike~`, `` `code` ``, ```` ```pre``` ````,
`<url|label>`, `<@U123>`, `<!here>`, `> quote`, `:emoji:`; the text is sent
with `&`, `<`, `>` escaped as entities.
"""

from __future__ import annotations

import html
import re
from datetime import datetime, timezone
from typing import Any

from .messages import Message, PayloadError, escape, expect, link

# The emoji shortcodes tools put in notifications most; others stay as text.
EMOJI = {
    "white_check_mark": "✅", "heavy_check_mark": "✔️", "x": "❌", "warning": "⚠️",
    "rotating_light": "🚨", "fire": "🔥", "red_circle": "🔴", "large_green_circle": "🟢",
    "large_yellow_circle": "🟡", "large_orange_circle": "🟠", "large_blue_circle": "🔵",
    "green_heart": "💚", "broken_heart": "💔", "heart": "❤️", "star": "⭐", "tada": "🎉",
    "rocket": "🚀", "bell": "🔔", "no_entry": "⛔", "information_source": "ℹ️",
    "exclamation": "❗", "question": "❓", "bug": "🐛", "memo": "📝", "package": "📦",
    "hourglass": "⌛", "clock1": "🕐", "moneybag": "💰", "chart_with_upwards_trend": "📈",
    "chart_with_downwards_trend": "📉", "thumbsup": "👍", "+1": "👍", "thumbsdown": "👎",
    "-1": "👎", "eyes": "👀", "wave": "👋", "construction": "🚧", "lock": "🔒",
    "smile": "😄", "slightly_smiling_face": "🙂", "sunny": "☀️", "zap": "⚡", "boom": "💥",
}
_EMOJI = re.compile(r":([a-z0-9_+\-]+):")
_TOKEN = re.compile(r"```\n?(?P<pre>.+?)```|`(?P<code>[^`\n]+)`|<(?P<ref>[^<>\s][^<>]*)>", re.S)
_INLINE = [
    (re.compile(r"(?<![\w*])\*(?=\S)([^*\n]+?)(?<=\S)\*(?![\w*])"), "strong"),
    (re.compile(r"(?<![\w_])_(?=\S)([^_\n]+?)(?<=\S)_(?![\w_])"), "em"),
    (re.compile(r"(?<![\w~])~(?=\S)([^~\n]+?)(?<=\S)~(?![\w~])"), "del"),
]
# Marks where a token's HTML goes back in; mrkdwn() removes NUL from its input first.
_PLACEHOLDER = "\x00"
_COLORS = {"good": "#2eb886", "warning": "#daa038", "danger": "#a30200"}


def emoji(text: str) -> str:
    return _EMOJI.sub(lambda m: EMOJI.get(m.group(1), m.group(0)), text)


def _reference(ref: str) -> tuple[str, str]:
    """(plain, html) of an angle-bracket reference: a link, a mention, a special."""
    target, _, label = ref.partition("|")
    if target.startswith(("@", "#")):
        text = target[0] + label if label else target
        return text, f"<strong>{escape(text)}</strong>"
    if target.startswith("!"):
        name = target[1:].split("^", 1)[0]
        text = label or ("@" + name if name in ("here", "channel", "everyone") else name)
        return text, f"<strong>{escape(text)}</strong>"
    url = html.unescape(target)
    label = html.unescape(label) if label else ""
    plain = f"{label} ({url})" if label and label != url else url
    return plain, link(url, label or url)


def mrkdwn(text: str) -> tuple[str, str]:
    """(plain, html) of Slack mrkdwn."""
    # NUL shows nothing, and here it marks tokens: text cannot make one.
    text = text.replace(_PLACEHOLDER, "")
    pieces_plain: list[str] = []
    pieces_html: list[str] = []
    tokens: list[str] = []
    pos = 0
    for m in _TOKEN.finditer(text):
        pieces_plain.append(html.unescape(text[pos : m.start()]))
        pieces_html.append(escape(html.unescape(text[pos : m.start()])))
        if m.group("pre") is not None:
            code = html.unescape(m.group("pre"))
            pieces_plain.append(f"```\n{code}```")
            tokens.append(f"<pre><code>{escape(code)}</code></pre>")
        elif m.group("code") is not None:
            code = html.unescape(m.group("code"))
            pieces_plain.append(f"`{code}`")
            tokens.append(f"<code>{escape(code)}</code>")
        else:
            plain, rendered = _reference(m.group("ref"))
            pieces_plain.append(plain)
            tokens.append(rendered)
        pieces_html.append(_PLACEHOLDER)
        pos = m.end()
    pieces_plain.append(html.unescape(text[pos:]))
    pieces_html.append(escape(html.unescape(text[pos:])))

    marked = emoji("".join(pieces_html))
    for pattern, tag in _INLINE:
        marked = pattern.sub(rf"<{tag}>\1</{tag}>", marked)
    out: list[str] = []
    quote: list[str] = []
    for line in marked.split("\n"):
        if line.startswith("&gt;"):
            quote.append(line[4:].removeprefix(" "))
            continue
        if quote:
            out.append("<blockquote>" + "<br>".join(quote) + "</blockquote>")
            quote = []
        out.append(line)
    if quote:
        out.append("<blockquote>" + "<br>".join(quote) + "</blockquote>")
    rendered = re.sub(r"(</blockquote>)<br>", r"\1", "<br>".join(out))
    # One placeholder per token, in order (formatting neither drops nor moves them).
    head, *tails = rendered.split(_PLACEHOLDER)
    rendered = head + "".join(token + tail for token, tail in zip(tokens, tails))
    return emoji("".join(pieces_plain)), rendered


# ------------------------------------------------------------------ payloads


def render(payload: dict[str, Any]) -> Message:
    """The message for a Slack incoming-webhook payload, or a PayloadError saying what is wrong."""
    text = expect(payload.get("text"), str, "text")
    attachments = expect(payload.get("attachments"), list, "attachments") or []
    blocks = expect(payload.get("blocks"), list, "blocks") or []
    plain: list[str] = []
    rich: list[str] = []
    if blocks:
        for i, block in enumerate(blocks):
            _block(expect(block, dict, f"blocks[{i}]"), f"blocks[{i}]", plain, rich)
    if not plain and text:
        p, h = mrkdwn(text)
        plain.append(p)
        rich.append(h)
    for i, attachment in enumerate(attachments):
        _attachment(expect(attachment, dict, f"attachments[{i}]"), f"attachments[{i}]", plain, rich)
    if not any(p.strip() for p in plain):
        raise PayloadError("no_text: the payload has no text, attachments or blocks to show")
    return Message("\n".join(plain), "".join(_paragraph(h) for h in rich))


def _paragraph(fragment: str) -> str:
    if fragment.startswith(("<blockquote>", "<h", "<hr", "<ul>", "<pre>", "<p>")):
        return fragment
    return f"<p>{fragment}</p>"


def _text_object(obj: Any, where: str) -> tuple[str, str]:
    """(plain, html) of a Block Kit text object (mrkdwn or plain_text) or a bare string."""
    if isinstance(obj, str):
        return mrkdwn(obj)
    obj = expect(obj, dict, where)
    text = expect(obj.get("text"), str, f"{where}.text", required=True)
    if obj.get("type") == "plain_text":
        return emoji(text), escape(emoji(text)).replace("\n", "<br>")
    return mrkdwn(text)


def _block(block: dict[str, Any], where: str, plain: list[str], rich: list[str]) -> None:
    kind = expect(block.get("type"), str, f"{where}.type", required=True)
    if kind == "header":
        p, h = _text_object(block.get("text"), f"{where}.text")
        plain.append(p)
        rich.append(f"<h4>{h}</h4>")
    elif kind == "section":
        if block.get("text") is not None:
            p, h = _text_object(block["text"], f"{where}.text")
            plain.append(p)
            rich.append(h)
        fields = expect(block.get("fields"), list, f"{where}.fields") or []
        if fields:
            parts = [_text_object(f, f"{where}.fields[{i}]") for i, f in enumerate(fields)]
            plain.extend(p for p, _ in parts)
            rich.append("<ul>" + "".join(f"<li>{h}</li>" for _, h in parts) + "</ul>")
        accessory = expect(block.get("accessory"), dict, f"{where}.accessory")
        if accessory:
            _element(accessory, f"{where}.accessory", plain, rich)
    elif kind == "divider":
        plain.append("---")
        rich.append("<hr>")
    elif kind == "context":
        for i, element in enumerate(expect(block.get("elements"), list, f"{where}.elements") or []):
            element = expect(element, dict, f"{where}.elements[{i}]")
            if element.get("type") in ("mrkdwn", "plain_text"):
                p, h = _text_object(element, f"{where}.elements[{i}]")
                plain.append(p)
                rich.append(f"<sub>{h}</sub>")
    elif kind == "image":
        _element(block, where, plain, rich)
    elif kind == "actions":
        for i, element in enumerate(expect(block.get("elements"), list, f"{where}.elements") or []):
            _element(expect(element, dict, f"{where}.elements[{i}]"), f"{where}.elements[{i}]", plain, rich)
    elif kind == "rich_text":
        p = _rich_text(block.get("elements"))
        if p.strip():
            plain.append(p)
            rich.append(escape(p).replace("\n", "<br>"))
    # Other block types (input, file, video...) carry nothing a message shows.


def _element(element: dict[str, Any], where: str, plain: list[str], rich: list[str]) -> None:
    kind = element.get("type")
    if kind == "image":
        url = expect(element.get("image_url"), str, f"{where}.image_url") or ""
        alt = expect(element.get("alt_text"), str, f"{where}.alt_text") or "image"
        if url:
            plain.append(f"{alt} ({url})")
            rich.append(link(url, f"🖼 {alt}"))
    elif kind == "button":
        url = expect(element.get("url"), str, f"{where}.url")
        if url:
            label, _ = _text_object(element.get("text"), f"{where}.text")
            plain.append(f"{label} ({url})")
            rich.append(link(url, label))


def _rich_text(elements: Any) -> str:
    """The text of a rich_text block's nested sections, lists and quotes."""
    if not isinstance(elements, list):
        return ""
    out = []
    for element in elements:
        if not isinstance(element, dict):
            continue
        kind = element.get("type")
        if kind == "text" and isinstance(element.get("text"), str):
            out.append(element["text"])
        elif kind == "link" and isinstance(element.get("url"), str):
            out.append(element.get("text") or element["url"])
        elif kind == "emoji" and isinstance(element.get("name"), str):
            out.append(emoji(f":{element['name']}:"))
        elif kind == "user" and isinstance(element.get("user_id"), str):
            out.append("@" + element["user_id"])
        elif kind == "rich_text_list":
            out.append("\n".join("• " + _rich_text(item.get("elements")) for item in element.get("elements", []) if isinstance(item, dict)) + "\n")
        else:
            out.append(_rich_text(element.get("elements")))
    return "".join(out)


def _attachment(att: dict[str, Any], where: str, plain: list[str], rich: list[str]) -> None:
    def text(key: str) -> str | None:
        return expect(att.get(key), str, f"{where}.{key}")

    if text("pretext"):
        p, h = mrkdwn(att["pretext"])
        plain.append(p)
        rich.append(h)
    inner_plain: list[str] = []
    inner: list[str] = []
    color = text("color")
    bar = ""
    if color:
        hexcolor = _COLORS.get(color, color)
        if re.fullmatch(r"#?[0-9A-Fa-f]{6}", hexcolor):
            bar = f'<font data-mx-color="#{hexcolor.lstrip("#")}">▌</font> '
    if text("author_name"):
        name = att["author_name"]
        inner_plain.append(name)
        inner.append(f"<sub>{link(att['author_link'], name) if text('author_link') else escape(name)}</sub>")
    if text("title"):
        title = att["title"]
        title_link = text("title_link")
        inner_plain.append(f"{title} ({title_link})" if title_link else title)
        inner.append(bar + f"<strong>{link(title_link, title) if title_link else escape(title)}</strong>")
        bar = ""
    if text("text"):
        p, h = mrkdwn(att["text"])
        inner_plain.append(p)
        inner.append(bar + h)
        bar = ""
    fields = expect(att.get("fields"), list, f"{where}.fields") or []
    items = []
    for i, f in enumerate(fields):
        f = expect(f, dict, f"{where}.fields[{i}]")
        title = expect(f.get("title"), str, f"{where}.fields[{i}].title") or ""
        value = f.get("value")
        value = "" if value is None else str(value)
        p, h = mrkdwn(value)
        inner_plain.append(f"{title}: {p}" if title else p)
        items.append(f"<li><strong>{escape(title)}</strong>: {h}</li>" if title else f"<li>{h}</li>")
    if items:
        inner.append("<ul>" + "".join(items) + "</ul>")
    if text("image_url"):
        inner_plain.append(att["image_url"])
        inner.append(link(att["image_url"], "🖼 image"))
    footer = text("footer")
    ts = att.get("ts")
    stamp = _timestamp(ts, f"{where}.ts") if ts is not None else None
    if footer or stamp:
        line = " | ".join(x for x in (footer, stamp) if x)
        inner_plain.append(line)
        inner.append(f"<sub>{escape(line)}</sub>")
    if not inner_plain and text("fallback"):
        inner_plain.append(att["fallback"])
        inner.append(escape(att["fallback"]))
    if inner_plain:
        plain.extend(inner_plain)
        rich.append("<blockquote>" + "<br>".join(inner) + "</blockquote>")


def _timestamp(ts: Any, where: str) -> str:
    try:
        seconds = float(ts)
    except (TypeError, ValueError):
        raise PayloadError(f"{where}: expected a Unix timestamp") from None
    try:
        return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    except (OverflowError, OSError, ValueError):
        raise PayloadError(f"{where}: timestamp out of range") from None
