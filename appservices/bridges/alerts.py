"""Alert notifications: Prometheus Alertmanager (webhook v4) and Grafana alerting.

Both send one notification per alert group: `status` firing or resolved,
`groupKey`, and `alerts`, each with labels, annotations and a fingerprint.
Grafana's payload is Alertmanager's plus a title, links to silence the
alert and to its dashboard and panel, and the values that fired it.

A group's first firing message is remembered under its group key (and each
alert's fingerprint); later notifications of the same group, the
resolution included, are replies to it.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from .messages import Message, PayloadError, escape, expect, link

# Shown per alert: the rest of the annotations are listed after these.
_LEAD_ANNOTATIONS = ("summary", "description", "message")
_LINK_ANNOTATIONS = {"runbook_url": "Runbook", "runbook": "Runbook", "dashboard": "Dashboard"}
_SEVERITY_EMOJI = {
    "critical": "🔴", "page": "🔴", "error": "🔴", "high": "🔴",
    "warning": "🟠", "warn": "🟠", "medium": "🟠",
    "info": "🔵", "low": "🔵", "none": "⚪",
}
# Above this many alerts a message lists the first ones and counts the rest.
MAX_LISTED_ALERTS = 20


def render_alertmanager(payload: dict[str, Any], hook: str) -> Message:
    version = payload.get("version")
    if version is not None and version != "4":
        raise PayloadError(f"version: this receiver speaks Alertmanager webhook version 4, got {version!r}")
    return _render(payload, hook, source="Alertmanager")


def render_grafana(payload: dict[str, Any], hook: str) -> Message:
    if "alerts" not in payload and ("ruleName" in payload or "evalMatches" in payload):
        raise PayloadError(
            "this is a legacy Grafana alert notification; use Grafana (unified) alerting"
            " with a webhook contact point"
        )
    return _render(payload, hook, source="Grafana")


def _strings(value: Any, where: str) -> dict[str, str]:
    value = expect(value, dict, where) or {}
    for key, item in value.items():
        expect(item, str, f"{where}.{key}")
    return value


def _status(value: Any, where: str) -> str:
    status = expect(value, str, where, required=True)
    if status not in ("firing", "resolved"):
        raise PayloadError(f"{where}: expected 'firing' or 'resolved', got {status!r}")
    return status


def _render(payload: dict[str, Any], hook: str, *, source: str) -> Message:
    status = _status(payload.get("status"), "status")
    alerts = expect(payload.get("alerts"), list, "alerts", required=True)
    if not alerts:
        raise PayloadError("alerts: the notification has no alerts")
    group_key = expect(payload.get("groupKey"), str, "groupKey")
    common_labels = _strings(payload.get("commonLabels"), "commonLabels")
    group_labels = _strings(payload.get("groupLabels"), "groupLabels")
    _strings(payload.get("commonAnnotations"), "commonAnnotations")
    external_url = expect(payload.get("externalURL"), str, "externalURL")
    truncated = expect(payload.get("truncatedAlerts"), int, "truncatedAlerts") or 0
    parsed = [_alert(a, f"alerts[{i}]") for i, a in enumerate(alerts)]

    firing = [a for a in parsed if a["status"] == "firing"]
    resolved = [a for a in parsed if a["status"] == "resolved"]
    severity = common_labels.get("severity") or next(
        (a["labels"]["severity"] for a in firing if "severity" in a["labels"]), None
    )
    name = (
        group_labels.get("alertname")
        or common_labels.get("alertname")
        or ", ".join(dict.fromkeys(a["labels"].get("alertname", "alert") for a in parsed))
    )
    if status == "resolved":
        icon, word = "✅", "RESOLVED"
    else:
        icon, word = _SEVERITY_EMOJI.get((severity or "").lower(), "🔥"), "FIRING"
    count = len(firing) if status == "firing" else len(resolved)
    headline = f"{icon} {word}"
    if status == "firing" and resolved:
        headline += f" ({len(firing)} firing, {len(resolved)} resolved)"
    headline += f": {name}"
    if count > 1:
        headline += f" ×{count}"
    if severity:
        headline += f" [{severity}]"
    scope = {k: v for k, v in group_labels.items() if k not in ("alertname", "severity")}
    if scope:
        headline += " " + ", ".join(f"{k}={v}" for k, v in scope.items())

    plain = [headline]
    rich = [f"<p><strong>{escape(headline)}</strong></p>"]
    shown_common = {k: v for k, v in common_labels.items() if k not in ("alertname", "severity") and k not in scope}
    if shown_common and len(parsed) > 1:
        plain.append("Labels: " + ", ".join(f"{k}={v}" for k, v in shown_common.items()))
        rich.append("<p>" + _labels_html(shown_common) + "</p>")
    items = []
    omit = set(common_labels) if len(parsed) > 1 else {"alertname"}
    for alert in parsed[:MAX_LISTED_ALERTS]:
        p, h = _alert_lines(alert, omit, mixed=bool(firing and resolved))
        plain.append("• " + "\n  ".join(p))
        items.append("<li>" + "<br>".join(h) + "</li>")
    rich.append("<ul>" + "".join(items) + "</ul>")
    hidden = len(parsed) - MAX_LISTED_ALERTS + truncated if len(parsed) > MAX_LISTED_ALERTS else truncated
    if hidden > 0:
        plain.append(f"…and {hidden} more")
        rich.append(f"<p>…and {hidden} more</p>")
    if external_url:
        plain.append(f"{source}: {external_url}")
        rich.append(f"<p><sub>{link(external_url, source)}</sub></p>")

    prefix = f"{source.lower()}:{hook}:"
    group = [prefix + "group:" + group_key] if group_key else []
    fingerprints = [prefix + "alert:" + a["fingerprint"] for a in parsed if a["fingerprint"]]
    firing_fps = [prefix + "alert:" + a["fingerprint"] for a in firing if a["fingerprint"]]
    resolved_fps = [prefix + "alert:" + a["fingerprint"] for a in resolved if a["fingerprint"]]
    return Message(
        "\n".join(plain),
        "".join(rich),
        reply_to=group + fingerprints,
        remember_as=(group + firing_fps) if status == "firing" else [],
        forget=(group if status == "resolved" else []) + resolved_fps,
    )


def _alert(value: Any, where: str) -> dict[str, Any]:
    alert = expect(value, dict, where)
    starts = expect(alert.get("startsAt"), str, f"{where}.startsAt")
    ends = expect(alert.get("endsAt"), str, f"{where}.endsAt")
    urls = {}
    for key, label in (
        ("generatorURL", "Source"),
        ("silenceURL", "Silence"),
        ("dashboardURL", "Dashboard"),
        ("panelURL", "Panel"),
        ("imageURL", "Image"),
    ):
        url = expect(alert.get(key), str, f"{where}.{key}")
        if url:
            urls[label] = url
    values = alert.get("values")
    value_string = expect(alert.get("valueString"), str, f"{where}.valueString")
    if isinstance(values, dict) and values:
        value_text = ", ".join(f"{k}={v}" for k, v in values.items())
    else:
        value_text = value_string or ""
    return {
        "status": _status(alert.get("status"), f"{where}.status"),
        "labels": _strings(alert.get("labels"), f"{where}.labels"),
        "annotations": _strings(alert.get("annotations"), f"{where}.annotations"),
        "starts": _time(starts),
        "ends": _time(ends),
        "fingerprint": expect(alert.get("fingerprint"), str, f"{where}.fingerprint") or "",
        "urls": urls,
        "values": value_text,
    }


def _time(value: str | None) -> str | None:
    """RFC 3339 (nanoseconds and all) as `YYYY-MM-DD HH:MM:SS UTC`; Go's zero time is None."""
    if not value or value.startswith("0001-01-01"):
        return None
    text = value.replace("Z", "+00:00")
    date, dot, rest = text.partition(".")
    if dot:
        digits = len(rest) - len(rest.lstrip("0123456789"))
        text = f"{date}.{rest[:digits][:6].ljust(6, '0')}{rest[digits:]}"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return value
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(timezone.utc)
    return parsed.strftime("%Y-%m-%d %H:%M:%S UTC")


def _labels_html(labels: dict[str, str]) -> str:
    return " ".join(f"<code>{escape(k)}={escape(v)}</code>" for k, v in labels.items())


def _alert_lines(alert: dict[str, Any], omit: set[str], *, mixed: bool) -> tuple[list[str], list[str]]:
    labels, annotations = alert["labels"], alert["annotations"]
    title = annotations.get("summary") or labels.get("alertname") or "alert"
    if mixed:
        title = ("✅ " if alert["status"] == "resolved" else "🔥 ") + title
    plain = [title]
    rich = [f"<strong>{escape(title)}</strong>"]
    for key in _LEAD_ANNOTATIONS[1:]:
        if annotations.get(key) and annotations[key] != title:
            plain.append(annotations[key])
            rich.append(escape(annotations[key]).replace("\n", "<br>"))
    shown = {k: v for k, v in labels.items() if k not in omit}
    if shown:
        plain.append("Labels: " + ", ".join(f"{k}={v}" for k, v in shown.items()))
        rich.append(_labels_html(shown))
    links = dict(alert["urls"])
    for key, value in annotations.items():
        if key in _LEAD_ANNOTATIONS:
            continue
        if key in _LINK_ANNOTATIONS and value.startswith(("http://", "https://")):
            links[_LINK_ANNOTATIONS[key]] = value
        else:
            plain.append(f"{key}: {value}")
            rich.append(f"<em>{escape(key)}</em>: {escape(value)}")
    if alert["values"]:
        plain.append(f"Values: {alert['values']}")
        rich.append(f"Values: <code>{escape(alert['values'])}</code>")
    when = []
    if alert["starts"]:
        when.append(f"since {alert['starts']}")
    if alert["status"] == "resolved" and alert["ends"]:
        when.append(f"resolved {alert['ends']}")
    if when:
        line = ", ".join(when)
        line = line[0].upper() + line[1:]
        plain.append(line)
        rich.append(f"<sub>{escape(line)}</sub>")
    if links:
        plain.append(" | ".join(f"{label}: {url}" for label, url in links.items()))
        rich.append(" · ".join(link(url, label) for label, url in links.items()))
    return plain, rich
