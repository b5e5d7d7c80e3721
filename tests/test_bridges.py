"""The bundled bridges (appservices/bridges): webhooks, command bot, tasks.

Unit tests render real payload shapes (Alertmanager v4, Grafana alerting,
Slack text/attachments/blocks) and check every refusal. Integration tests
run the bridges in-process on their own HTTP port against a real
homeserver (both engines) that loads their registration files, and read
what they posted back through a normal client's /messages. The ERP and the
task tracker the bot calls are small local aiohttp servers; a forwarding
proxy between a bridge and the homeserver plays the homeserver going down
(or a response getting lost) to check that a hook posts exactly once.
"""

from __future__ import annotations

import asyncio
import copy
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import aiohttp
import pytest
import yaml
from aiohttp import web
from yarl import URL

from appservices.bridges.__main__ import main as bridges_main
from appservices.bridges.alerts import render_alertmanager, render_grafana
from appservices.bridges.appservice import AppService
from appservices.bridges.bot import CommandBot, fill_body, needed_args, parse_command, strip_reply_fallback
from appservices.bridges.config import Command, ConfigError, Hook, parse_config
from appservices.bridges.messages import PayloadError, text_to_html
from appservices.bridges.slack import mrkdwn
from appservices.bridges.slack import render as render_slack
from appservices.bridges.state import State
from appservices.bridges.templates import TemplateError, render
from appservices.bridges.webhooks import WebhooksBridge, render_hook
from appservices.registration import load_registration

if TYPE_CHECKING:
    from .conftest import TestServer

V3 = "/_matrix/client/v3"
SERVER_NAME = "test.local"

# ------------------------------------------------------- real payload shapes

# Alertmanager's webhook v4 payload, as Alertmanager sends it.
ALERTMANAGER_FIRING = {
    "receiver": "matrix",
    "status": "firing",
    "alerts": [
        {
            "status": "firing",
            "labels": {
                "alertname": "ProbeFailure",
                "instance": "https://server.example.org",
                "job": "http_checks",
                "monitor": "master",
                "severity": "critical",
            },
            "annotations": {
                "description": "Instance https://server.example.org has been down for over 5m. Job: http_checks",
                "summary": "BlackBox Probe Failure: https://server.example.org",
                "runbook_url": "https://runbooks.example.org/probe-failure",
            },
            "startsAt": "2023-02-06T13:08:45.828Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus.example.org:9090/graph?g0.expr=probe_success+%3D%3D+0&g0.tab=1",
            "fingerprint": "1a30ba71cca2921f",
        }
    ],
    "groupLabels": {"alertname": "ProbeFailure"},
    "commonLabels": {
        "alertname": "ProbeFailure",
        "instance": "https://server.example.org",
        "job": "http_checks",
        "monitor": "master",
        "severity": "critical",
    },
    "commonAnnotations": {
        "description": "Instance https://server.example.org has been down for over 5m. Job: http_checks",
        "summary": "BlackBox Probe Failure: https://server.example.org",
    },
    "externalURL": "http://alertmanager.example.org:9093",
    "version": "4",
    "groupKey": '{}/{severity="critical"}:{alertname="ProbeFailure"}',
    "truncatedAlerts": 0,
}


def alertmanager_resolved() -> dict[str, Any]:
    payload = copy.deepcopy(ALERTMANAGER_FIRING)
    payload["status"] = "resolved"
    payload["alerts"][0]["status"] = "resolved"
    payload["alerts"][0]["endsAt"] = "2023-02-06T13:18:45.828123456+01:00"
    return payload


# Grafana alerting's webhook contact point payload (the documented example).
GRAFANA_FIRING = {
    "receiver": "My Super Webhook",
    "status": "firing",
    "orgId": 1,
    "alerts": [
        {
            "status": "firing",
            "labels": {"alertname": "High memory usage", "team": "blue", "zone": "us-1"},
            "annotations": {
                "description": "The system has high memory usage",
                "runbook_url": "https://myrunbook.com/runbook/1234",
                "summary": "This alert was triggered for zone us-1",
            },
            "startsAt": "2021-10-12T09:51:03.157076+02:00",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "https://play.grafana.org/alerting/1afz29v7z/edit",
            "fingerprint": "c6eadffa33fcdf37",
            "silenceURL": "https://play.grafana.org/alerting/silence/new?alertmanager=grafana&matchers=alertname%3DT2%2Cteam%3Dblue%2Czone%3Dus-1",
            "dashboardURL": "",
            "panelURL": "",
            "values": {"B": 44.23943737541908, "C": 1},
        },
        {
            "status": "firing",
            "labels": {"alertname": "High CPU usage", "team": "blue", "zone": "eu-1"},
            "annotations": {
                "description": "The system has high CPU usage",
                "runbook_url": "https://myrunbook.com/runbook/1234",
                "summary": "This alert was triggered for zone eu-1",
            },
            "startsAt": "2021-10-12T09:56:03.157076+02:00",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "https://play.grafana.org/alerting/d1rdpdv7k/edit",
            "fingerprint": "bc97ff14869b13e3",
            "silenceURL": "https://play.grafana.org/alerting/silence/new?alertmanager=grafana&matchers=alertname%3DT1%2Cteam%3Dblue%2Czone%3Deu-1",
            "dashboardURL": "",
            "panelURL": "",
            "values": {"B": 44.23943737541908, "C": 1},
        },
    ],
    "groupLabels": {},
    "commonLabels": {"team": "blue"},
    "commonAnnotations": {},
    "externalURL": "https://play.grafana.org/",
    "version": "1",
    "groupKey": "{}:{}",
    "truncatedAlerts": 0,
    "title": "[FIRING:2]  (blue)",
    "state": "alerting",
    "message": "**Firing**\n\nLabels:\n - alertname = T2\n - team = blue\n - zone = us-1\n",
}

# Slack's documented incoming-webhook examples.
SLACK_ATTACHMENTS = {
    "attachments": [
        {
            "fallback": "Required plain-text summary of the attachment.",
            "color": "#36a64f",
            "pretext": "Optional text that appears above the attachment block",
            "author_name": "Bobby Tables",
            "author_link": "http://flickr.com/bobby/",
            "author_icon": "http://flickr.com/icons/bobby.jpg",
            "title": "Slack API Documentation",
            "title_link": "https://api.slack.com/",
            "text": "Optional text that appears within the attachment",
            "fields": [{"title": "Priority", "value": "High", "short": False}],
            "image_url": "http://my-website.com/path/to/image.jpg",
            "thumb_url": "http://example.com/path/to/thumb.png",
            "footer": "Slack API",
            "footer_icon": "https://platform.slack-edge.com/img/default_application_icon.png",
            "ts": 123456789,
        }
    ]
}
SLACK_BLOCKS = {
    "text": "Danny Torrence left a 1 star review for your property.",
    "blocks": [
        {
            "type": "section",
            "text": {"type": "mrkdwn", "text": "Danny Torrence left the following review for your property:"},
        },
        {
            "type": "section",
            "block_id": "section567",
            "text": {
                "type": "mrkdwn",
                "text": "<https://example.com|Overlook Hotel> \n :star: \n Doors had too many axe holes,"
                " guest in room 237 was far too rowdy, whole place felt stuck in the 1920s.",
            },
            "accessory": {
                "type": "image",
                "image_url": "https://is5-ssl.mzstatic.com/image/thumb/Purple3/v4/d3/72/5c/source/256x256bb.jpg",
                "alt_text": "Haunted hotel image",
            },
        },
        {"type": "section", "block_id": "section789", "fields": [{"type": "mrkdwn", "text": "*Average Rating*\n1.0"}]},
        {"type": "divider"},
        {
            "type": "actions",
            "elements": [
                {"type": "button", "text": {"type": "plain_text", "text": "Reply"}, "url": "https://example.com/reply"}
            ],
        },
    ],
}


# ================================================================= templates


def test_template_renders_nested_fields_and_format_specs() -> None:
    data = {"name": "Ada", "deal": {"amount": 12500.5, "tags": ["hot", "b2b"]}, "won": True, "note": None}
    assert (
        render("{name}: {deal.amount:,.2f} EUR [{deal.tags[0]}/{deal.tags.1}] won={won} note={note}", data)
        == "Ada: 12,500.50 EUR [hot/b2b] won=true note="
    )
    assert render("{deal}", data) == '{"amount": 12500.5, "tags": ["hot", "b2b"]}'
    assert render("<b>{name}</b>", {"name": "<script>"}, escape=lambda s: s.replace("<", "&lt;")) == "<b>&lt;script></b>"


def test_template_reports_every_missing_field() -> None:
    with pytest.raises(TemplateError) as err:
        render("New lead: {name}, {company}, {amount}", {"name": "Ada"})
    assert err.value.missing == ["company", "amount"]
    assert str(err.value) == "missing fields: company, amount"
    with pytest.raises(TemplateError, match="missing field: a.b"):
        render("{a.b}", {"a": "not an object"})
    with pytest.raises(TemplateError, match="cannot format 'abc' with ',.2f'"):
        render("{amount:,.2f}", {"amount": "abc"})


def test_template_format_specs_are_the_templates_own() -> None:
    # A field in a format spec would take the spec from the payload: `w` = ">999999999"
    # pads to a gigabyte. Refused whatever the data, before anything is formatted.
    with pytest.raises(TemplateError, match=r"\{x:\{w\}\}: a format spec cannot contain a field"):
        render("{x:{w}}", {"x": "a", "w": ">5"})
    with pytest.raises(TemplateError, match="a format spec cannot contain a field"):
        render("{x:>{w}.{p}f}", {"x": 1.5, "w": "5", "p": "2"})
    for spec in (">1001", ".1001f", "0>0000001001", "9" * 5000):
        with pytest.raises(TemplateError, match="a width or precision is at most 1000"):
            render("{x:%s}" % spec, {"x": 1.5})
    assert render("{x:*>1000}", {"x": "a"}) == "*" * 999 + "a"
    assert render("{x:9>6.1f}", {"x": 1.25}) == "9991.2"


def test_template_never_reaches_python_attributes() -> None:
    with pytest.raises(TemplateError):
        render("{name.__class__}", {"name": "x"})
    # Conversions would show Python reprs; the value is shown as JSON text instead.
    assert render("{name!r}", {"name": "x"}) == "x"


# ===================================================================== Slack


def test_mrkdwn_to_html_and_plain() -> None:
    plain, html = mrkdwn(
        "*Build* _passed_ on <https://ci.example.com/b/1?a=1&amp;b=2|build #1> for `main` :white_check_mark:\n"
        "&gt; quoted *x*\nnext ~gone~ snake_case_name <!here> <@U123|bob> 3 &lt; 4 <script>"
    )
    assert html == (
        "<strong>Build</strong> <em>passed</em> on "
        '<a href="https://ci.example.com/b/1?a=1&amp;b=2">build #1</a> for <code>main</code> ✅<br>'
        "<blockquote>quoted <strong>x</strong></blockquote>"
        "next <del>gone</del> snake_case_name <strong>@here</strong> <strong>@bob</strong> 3 &lt; 4 script"
    )
    assert plain == (
        "*Build* _passed_ on build #1 (https://ci.example.com/b/1?a=1&b=2) for `main` ✅\n"
        "> quoted *x*\nnext ~gone~ snake_case_name @here @bob 3 < 4 script"
    )


def test_mrkdwn_code_is_not_formatted_and_bad_links_are_text() -> None:
    plain, html = mrkdwn("```\nx = *y* <b>\n```\n<javascript:alert(1)|click> <https://a.example/_x_/>")
    assert html == (
        "<pre><code>x = *y* &lt;b&gt;\n</code></pre><br>click "
        '<a href="https://a.example/_x_/">https://a.example/_x_/</a>'
    )
    assert "javascript" not in html


def test_mrkdwn_text_cannot_forge_placeholders() -> None:
    # NUL marks where a link or code goes back in; text cannot make such a mark.
    assert mrkdwn("build \u00009\u0000 done") == ("build 9 done", "build 9 done")
    plain, html = mrkdwn("<https://ok.example|x> then \u00000\u0000 `c` \u00001\u0000")
    assert html == '<a href="https://ok.example">x</a> then 0 <code>c</code> 1'
    assert plain == "x (https://ok.example) then 0 `c` 1"
    assert mrkdwn("&#0;\x00") == ("\ufffd", "\ufffd")
    message = render_slack({"text": "a \u00000\u0000", "attachments": [{"title": "t", "text": "\u00005\u0000 <https://b.example>"}]})
    assert message.html == '<p>a 0</p><blockquote><strong>t</strong><br>5 <a href="https://b.example">https://b.example</a></blockquote>'
    assert "\x00" not in message.body


def test_slack_text_payload() -> None:
    message = render_slack({"text": "Deploy of *api* finished: <https://ci.example.com/42|#42>", "username": "ci"})
    assert message.body == "Deploy of *api* finished: #42 (https://ci.example.com/42)"
    assert message.html == '<p>Deploy of <strong>api</strong> finished: <a href="https://ci.example.com/42">#42</a></p>'
    assert message.content()["format"] == "org.matrix.custom.html"
    assert "m.relates_to" not in message.content()


def test_slack_legacy_attachments() -> None:
    message = render_slack(SLACK_ATTACHMENTS)
    assert message.body.split("\n") == [
        "Optional text that appears above the attachment block",
        "Bobby Tables",
        "Slack API Documentation (https://api.slack.com/)",
        "Optional text that appears within the attachment",
        "Priority: High",
        "http://my-website.com/path/to/image.jpg",
        "Slack API | 1973-11-29 21:33 UTC",
    ]
    assert '<a href="https://api.slack.com/">Slack API Documentation</a>' in message.html
    assert '<font data-mx-color="#36a64f">▌</font>' in message.html
    assert "<li><strong>Priority</strong>: High</li>" in message.html
    assert message.html.startswith("<p>Optional text that appears above the attachment block</p><blockquote>")


def test_slack_blocks() -> None:
    message = render_slack(SLACK_BLOCKS)
    lines = message.body.split("\n")
    assert lines[0] == "Danny Torrence left the following review for your property:"
    assert lines[1] == "Overlook Hotel (https://example.com) "
    assert "Haunted hotel image (https://is5-ssl.mzstatic.com" in message.body
    assert "*Average Rating*\n1.0" in message.body
    assert "Reply (https://example.com/reply)" in message.body
    assert "⭐" in message.body
    assert '<a href="https://example.com">Overlook Hotel</a>' in message.html
    assert "<li><strong>Average Rating</strong><br>1.0</li>" in message.html
    assert "<hr>" in message.html
    # The top-level text is the notification fallback when blocks are shown.
    assert "Danny Torrence left a 1 star review" not in message.body


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        ({}, "no_text"),
        ({"text": ""}, "no_text"),
        ({"text": 42}, "text: expected a string"),
        ({"attachments": {"text": "x"}}, "attachments: expected an array"),
        ({"attachments": ["x"]}, r"attachments\[0\]: expected an object"),
        ({"attachments": [{"fields": [{"title": 1}]}]}, r"attachments\[0\].fields\[0\].title: expected a string"),
        ({"attachments": [{"title": "t", "ts": "yesterday"}]}, r"attachments\[0\].ts: expected a Unix timestamp"),
        ({"blocks": [{"text": "no type"}]}, r"blocks\[0\].type: required"),
        ({"blocks": [{"type": "section", "text": {"type": "mrkdwn"}}]}, r"blocks\[0\].text.text: required"),
        ({"blocks": [{"type": "divider"}]}, None),
    ],
)
def test_slack_refusals(payload: dict[str, Any], error: str | None) -> None:
    if error is None:
        assert render_slack(payload).html == "<hr>"
        return
    with pytest.raises(PayloadError, match=error):
        render_slack(payload)


# ==================================================================== alerts


def test_alertmanager_firing() -> None:
    message = render_alertmanager(ALERTMANAGER_FIRING, "am")
    lines = message.body.split("\n")
    assert lines[0] == "🔴 FIRING: ProbeFailure [critical]"
    assert "BlackBox Probe Failure: https://server.example.org" in lines[1]
    assert "Instance https://server.example.org has been down for over 5m. Job: http_checks" in message.body
    assert "Labels: instance=https://server.example.org, job=http_checks, monitor=master, severity=critical" in message.body
    assert "Since 2023-02-06 13:08:45 UTC" in message.body
    assert "Runbook: https://runbooks.example.org/probe-failure" in message.body
    assert message.body.endswith("Alertmanager: http://alertmanager.example.org:9093")
    assert message.html.startswith("<p><strong>🔴 FIRING: ProbeFailure [critical]</strong></p><ul><li>")
    assert "<code>job=http_checks</code>" in message.html
    assert (
        '<a href="http://prometheus.example.org:9090/graph?g0.expr=probe_success+%3D%3D+0&amp;g0.tab=1">Source</a>'
        in message.html
    )
    group = 'alertmanager:am:group:{}/{severity="critical"}:{alertname="ProbeFailure"}'
    assert message.reply_to == [group, "alertmanager:am:alert:1a30ba71cca2921f"]
    assert message.remember_as == [group, "alertmanager:am:alert:1a30ba71cca2921f"]
    assert message.forget == []


def test_alertmanager_resolved_refers_to_the_firing_message() -> None:
    message = render_alertmanager(alertmanager_resolved(), "am")
    assert message.body.startswith("✅ RESOLVED: ProbeFailure [critical]")
    assert "Since 2023-02-06 13:08:45 UTC, resolved 2023-02-06 12:18:45 UTC" in message.body
    group = 'alertmanager:am:group:{}/{severity="critical"}:{alertname="ProbeFailure"}'
    assert message.reply_to[0] == group
    assert message.remember_as == []
    assert message.forget == [group, "alertmanager:am:alert:1a30ba71cca2921f"]


def test_alertmanager_mixed_group_and_many_alerts() -> None:
    payload = copy.deepcopy(ALERTMANAGER_FIRING)
    base = payload["alerts"][0]
    payload["alerts"] = []
    for i in range(25):
        alert = copy.deepcopy(base)
        alert["labels"]["instance"] = f"https://host{i}.example.org"
        alert["fingerprint"] = f"fp{i}"
        alert["status"] = "resolved" if i == 0 else "firing"
        payload["alerts"].append(alert)
    payload["truncatedAlerts"] = 3
    message = render_alertmanager(payload, "am")
    assert message.body.startswith("🔴 FIRING (24 firing, 1 resolved): ProbeFailure ×24 [critical]")
    assert "…and 8 more" in message.body
    assert message.body.count("\n• ") == 20
    assert "alertmanager:am:alert:fp0" in message.forget
    assert "alertmanager:am:alert:fp0" not in message.remember_as


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"version": "3"}, "version: this receiver speaks Alertmanager webhook version 4"),
        ({"status": "broken"}, "status: expected 'firing' or 'resolved'"),
        ({"status": None}, "status: required"),
        ({"alerts": []}, "alerts: the notification has no alerts"),
        ({"alerts": "x"}, "alerts: expected an array"),
        ({"alerts": [{"status": "firing", "labels": {"a": 1}}]}, r"alerts\[0\].labels.a: expected a string"),
        ({"alerts": [{"labels": {}}]}, r"alerts\[0\].status: required"),
        ({"commonLabels": []}, "commonLabels: expected an object"),
        ({"groupKey": 5}, "groupKey: expected a string"),
    ],
)
def test_alertmanager_refusals(change: dict[str, Any], error: str) -> None:
    payload = {**copy.deepcopy(ALERTMANAGER_FIRING), **change}
    with pytest.raises(PayloadError, match=error):
        render_alertmanager(payload, "am")


def test_grafana_firing() -> None:
    message = render_grafana(GRAFANA_FIRING, "grafana")
    lines = message.body.split("\n")
    assert lines[0] == "🔥 FIRING: High memory usage, High CPU usage ×2"
    assert lines[1] == "Labels: team=blue"
    assert "This alert was triggered for zone us-1" in message.body
    assert "Values: B=44.23943737541908, C=1" in message.body
    assert "Since 2021-10-12 07:51:03 UTC" in message.body
    assert "Silence: https://play.grafana.org/alerting/silence/new?" in message.body
    assert "Runbook: https://myrunbook.com/runbook/1234" in message.body
    assert message.body.endswith("Grafana: https://play.grafana.org/")
    assert "Dashboard" not in message.body  # empty URLs are left out
    assert message.remember_as == [
        "grafana:grafana:group:{}:{}",
        "grafana:grafana:alert:c6eadffa33fcdf37",
        "grafana:grafana:alert:bc97ff14869b13e3",
    ]


def test_grafana_legacy_payload_is_refused() -> None:
    legacy = {
        "title": "[Alerting] Test notification",
        "ruleId": 0,
        "ruleName": "Test notification",
        "state": "alerting",
        "evalMatches": [{"value": 100, "metric": "High value", "tags": None}],
        "message": "Someone is testing the alert notification within Grafana.",
    }
    with pytest.raises(PayloadError, match="legacy Grafana alert"):
        render_grafana(legacy, "grafana")


# ============================================================ template hooks


def test_template_hook() -> None:
    hook = Hook(
        name="crm",
        type="template",
        token="x" * 16,
        room="!r:test.local",
        template="New lead: {name}, {company} ({amount} EUR)",
        html_template="<b>New lead</b>: {name}, {company}",
        msgtype="m.notice",
    )
    message = render_hook(hook, {"name": "Ada <Lovelace>", "company": "Analytical Engines", "amount": 12000})
    assert message.body == "New lead: Ada <Lovelace>, Analytical Engines (12000 EUR)"
    assert message.html == "<b>New lead</b>: Ada &lt;Lovelace&gt;, Analytical Engines"
    assert message.msgtype == "m.notice"
    with pytest.raises(PayloadError, match="missing fields: company, amount"):
        render_hook(hook, {"name": "Ada"})
    hook.html_template = None
    assert render_hook(hook, {"name": "A\nB", "company": "<C>", "amount": 1}).html == (
        "New lead: A<br>B, &lt;C&gt; (1 EUR)"
    )
    # Without an HTML template, links in the text are links in the HTML.
    assert render_hook(hook, {"name": "https://crm.example.com/l?id=1&x=2.", "company": "(https://a.b/c)", "amount": 1}).html == (
        'New lead: <a href="https://crm.example.com/l?id=1&amp;x=2">https://crm.example.com/l?id=1&amp;x=2</a>.,'
        ' (<a href="https://a.b/c">https://a.b/c</a>) (1 EUR)'
    )


def test_html_template_values_stay_inside_attributes() -> None:
    hook = Hook(
        name="crm",
        type="template",
        token="x" * 16,
        room="!r:test.local",
        template="Lead {id}: {name}",
        html_template="<a href=\"https://crm.example.com/lead/{id}\">{name}</a> <span title='{name}'>i</span>",
    )
    message = render_hook(hook, {"id": '1" onclick="alert(1)', "name": "O'Brien \"<b>\""})
    assert message.html == (
        '<a href="https://crm.example.com/lead/1&quot; onclick=&quot;alert(1)">O&#x27;Brien &quot;&lt;b&gt;&quot;</a>'
        " <span title='O&#x27;Brien &quot;&lt;b&gt;&quot;'>i</span>"
    )
    # Links found in plain text are escaped as attributes too.
    assert text_to_html('see https://a.example/x\'y"z and <https://b.example/?a=1&b=2>') == (
        'see <a href="https://a.example/x&#x27;y">https://a.example/x&#x27;y</a>&quot;z and '
        '&lt;<a href="https://b.example/?a=1&amp;b=2">https://b.example/?a=1&amp;b=2</a>&gt;'
    )


# ==================================================================== config


def base_config(**sections: Any) -> dict[str, Any]:
    return {"homeserver": {"url": "http://127.0.0.1:8008", "server_name": SERVER_NAME}, **sections}


WEBHOOKS = {"as_token": "a" * 20, "hs_token": "h" * 20}


def hook(**fields: Any) -> dict[str, Any]:
    return {"name": "ci", "token": "t" * 16, "room": "!room:test.local", **fields}


def test_sample_config_is_valid() -> None:
    sample = Path(__file__).parent.parent / "appservices" / "bridges" / "bridges.sample.yaml"
    config = parse_config(yaml.safe_load(sample.read_text()), "/nonexistent")
    assert config.webhooks is not None and config.bot is not None
    assert [h.type for h in config.webhooks.hooks] == ["slack", "alertmanager", "grafana", "template"]
    assert config.webhooks.listen.port == 9000 and config.bot.listen.port == 9001
    assert config.webhooks.response_timeout == 5000
    assert config.bot.commands[0].timeout == 10_000


def test_config_defaults() -> None:
    config = parse_config(base_config(webhooks={**WEBHOOKS, "hooks": [hook()]}, bot=dict(WEBHOOKS)))
    assert config.webhooks is not None and config.bot is not None
    assert (config.webhooks.id, config.webhooks.sender_localpart, config.webhooks.listen.port) == (
        "webhooks", "_webhooks", 9000,
    )
    assert (config.bot.id, config.bot.sender_localpart, config.bot.listen.port) == ("bot", "_bot", 9001)
    assert config.webhooks.bridge_url == "http://127.0.0.1:9000"
    assert config.webhooks.hooks[0].type == "slack"


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        ([], "must be a YAML mapping"),
        ({"homeserver": {"server_name": SERVER_NAME}, "bot": WEBHOOKS}, "homeserver.url: expected"),
        ({"homeserver": {"url": "http://x"}, "bot": WEBHOOKS}, "homeserver.server_name: required"),
        (base_config(), "configure at least one bridge"),
        (base_config(webhooks={**WEBHOOKS, "hooks": [hook(token="short")]}), r"webhooks.hooks\[0\].token: a secret"),
        (base_config(webhooks={**WEBHOOKS, "hooks": [hook(room="general")]}), r"hooks\[0\].room: expected a room ID"),
        (base_config(webhooks={**WEBHOOKS, "hooks": [hook(name="Bad Name")]}), r"hooks\[0\].name: required"),
        (base_config(webhooks={**WEBHOOKS, "hooks": [hook(), hook(token="u" * 16)]}), "used by two hooks"),
        (base_config(webhooks={**WEBHOOKS, "hooks": [hook(), hook(name="b")]}), r"hooks\[1\].token: used by two"),
        (base_config(webhooks={**WEBHOOKS, "hooks": [hook(type="teams")]}), r"hooks\[0\].type: expected one of"),
        (base_config(webhooks={**WEBHOOKS, "hooks": [hook(type="template")]}), r"hooks\[0\].template: required"),
        (
            base_config(webhooks={**WEBHOOKS, "hooks": [hook(type="template", template="{name")]}),
            r"hooks\[0\].template: not a valid template",
        ),
        (base_config(webhooks={**WEBHOOKS, "hooks": [hook(template="{x}")]}), "only template hooks take"),
        (
            base_config(webhooks={**WEBHOOKS, "hooks": [hook(type="template", template="t", html_template="{x:{w}}")]}),
            r"hooks\[0\].html_template: not a valid template: \{x:\{w\}\}: a format spec cannot contain a field",
        ),
        (
            base_config(webhooks={**WEBHOOKS, "hooks": [hook(type="template", template="{x:>999999999}")]}),
            r"hooks\[0\].template: not a valid template: .*a width or precision is at most 1000",
        ),
        (
            base_config(bot={**WEBHOOKS, "commands": [{"name": "s", "url": "http://x/{arg1}", "reply": "{q:.{arg1}f}"}]}),
            r"bot.commands\[0\].reply: not a valid template: .*a format spec cannot contain a field",
        ),
        (
            base_config(bot={**WEBHOOKS, "commands": [{"name": "s", "url": "http://x/stock level/{arg1}", "reply": "r"}]}),
            r"bot.commands\[0\].url: write the URL percent-encoded",
        ),
        (
            base_config(bot={**WEBHOOKS, "commands": [{"name": "s", "url": "http://x/lagerbestände/{arg1}", "reply": "r"}]}),
            r"bot.commands\[0\].url: write the URL percent-encoded",
        ),
        (base_config(webhooks={**WEBHOOKS, "hooks": [hook(tokn="x")]}), r"webhooks.hooks\[0\].tokn: unknown option"),
        (base_config(webhooks={**WEBHOOKS, "listen": {"port": 70000}}), "webhooks.listen.port: 70000 is not"),
        (base_config(webhooks={**WEBHOOKS, "avatar_url": "http://x/a.png"}), "webhooks.avatar_url: expected an mxc"),
        (base_config(webhooks={**WEBHOOKS, "retry": {"initial": "2m", "max": "1m"}}), "webhooks.retry"),
        (
            base_config(bot={**WEBHOOKS, "commands": [{"name": "stock", "url": "ftp://x", "reply": "r"}]}),
            r"bot.commands\[0\].url: expected an http",
        ),
        (
            base_config(bot={**WEBHOOKS, "commands": [{"name": "stock", "url": "http://x/{sku}", "reply": "r"}]}),
            r"bot.commands\[0\].url: not a valid template: unknown field \{sku\}",
        ),
        (
            base_config(bot={**WEBHOOKS, "commands": [{"name": "help", "url": "http://x", "reply": "r"}]}),
            "is taken",
        ),
        (
            base_config(bot={**WEBHOOKS, "commands": [{"name": "s", "url": "http://x"}]}),
            r"bot.commands\[0\].reply: required",
        ),
        (
            base_config(bot={**WEBHOOKS, "task_hooks": [{"name": "j", "url": "http://t", "body": {"s": "{subject}"}}]}),
            r"bot.task_hooks\[0\].body.s: not a valid template: unknown field \{subject\}",
        ),
        (
            base_config(bot={**WEBHOOKS, "task_hooks": [{"name": "j", "url": "http://t", "reaction": None, "command": None}]}),
            "give a reaction, a command, or both",
        ),
        (
            base_config(bot={**WEBHOOKS, "task_hooks": [{"name": "j", "url": "http://t"}, {"name": "k", "url": "http://t"}]}),
            r"task_hooks\[1\].reaction: '✅' is used by two",
        ),
        (base_config(bot={"as_token": "x"}, webhooks=None), None),
    ],
)
def test_config_refusals(raw: Any, error: str | None) -> None:
    if error is None:
        parse_config(raw)
        return
    with pytest.raises(ConfigError, match=error):
        parse_config(raw)


def test_bridge_without_tokens_is_refused(tmp_path: Path) -> None:
    config = parse_config(base_config(bot={"registration": "bot.yaml"}), str(tmp_path))
    with pytest.raises(ConfigError, match="bot.registration: bot.yaml does not exist yet"):
        CommandBot(config)
    config = parse_config(base_config(bot={}), str(tmp_path))
    with pytest.raises(ConfigError, match="give `registration`"):
        CommandBot(config)


def write_bridges_config(path: Path, doc: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump(doc, allow_unicode=True))


def test_generate_registration(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config_path = tmp_path / "bridges.yaml"
    write_bridges_config(
        config_path,
        base_config(
            webhooks={"registration": "webhooks.yaml", "listen": {"port": 9100}, "hooks": [hook()]},
            bot={"registration": "bot.yaml", "url": "http://bridges.internal:9101"},
        ),
    )
    assert bridges_main(["generate-registration", "-c", str(config_path)]) == 1
    assert "name the bridge to register: webhooks or bot" in capsys.readouterr().err
    assert bridges_main(["generate-registration", "webhooks", "-c", str(config_path)]) == 0
    assert bridges_main(["generate-registration", "bot", "-c", str(config_path), "-o", str(tmp_path / "b.yaml")]) == 0
    (tmp_path / "b.yaml").rename(tmp_path / "bot.yaml")
    # The homeserver's own loader accepts what the bridge wrote.
    webhooks = load_registration(tmp_path / "webhooks.yaml", SERVER_NAME)
    bot = load_registration(tmp_path / "bot.yaml", SERVER_NAME)
    assert (webhooks.id, webhooks.url, webhooks.sender) == ("webhooks", "http://127.0.0.1:9100", "@_webhooks:test.local")
    assert (bot.url, bot.sender) == ("http://bridges.internal:9101", "@_bot:test.local")
    assert webhooks.is_exclusive_user("@_webhook_ci:test.local")
    assert not webhooks.is_interested_in_user("@alice:test.local")
    assert bot.is_exclusive_user("@_bot:test.local") and not bot.is_interested_in_user("@_botx:test.local")
    assert len({webhooks.as_token, webhooks.hs_token, bot.as_token, bot.hs_token}) == 4
    assert (tmp_path / "webhooks.yaml").stat().st_mode & 0o077 == 0
    # The bridges config now reads its tokens from those files.
    config = parse_config(yaml.safe_load(config_path.read_text()), str(tmp_path))
    assert config.webhooks is not None and config.webhooks.as_token == webhooks.as_token
    # Regenerating would change the tokens under a running homeserver: only with --force.
    assert bridges_main(["generate-registration", "webhooks", "-c", str(config_path)]) == 1
    assert "--force" in capsys.readouterr().err
    assert bridges_main(["generate-registration", "webhooks", "-c", str(config_path), "--force"]) == 0
    assert load_registration(tmp_path / "webhooks.yaml", SERVER_NAME).as_token != webhooks.as_token
    assert bridges_main(["check-config", "-c", str(config_path)]) == 0
    assert f"http://127.0.0.1:9100/hooks/{'t' * 16}" in capsys.readouterr().out


def test_conflicting_tokens_are_refused(tmp_path: Path) -> None:
    config_path = tmp_path / "bridges.yaml"
    write_bridges_config(config_path, base_config(bot={"registration": "bot.yaml"}))
    assert bridges_main(["generate-registration", "-c", str(config_path)]) == 0
    with pytest.raises(ConfigError, match="bot.as_token: differs from the one in"):
        parse_config(base_config(bot={"registration": "bot.yaml", "as_token": "other"}), str(tmp_path))
    (tmp_path / "bot.yaml").write_text("id: bot\n")
    with pytest.raises(ConfigError, match="bot.registration: .*as_token"):
        parse_config(base_config(bot={"registration": "bot.yaml"}), str(tmp_path))


# ===================================================================== state


def test_state(tmp_path: Path) -> None:
    state = State(tmp_path / "sub" / "state.db")
    assert state.first_seen("txn1") and not state.first_seen("txn1")
    a = state.enqueue("ci", {"body": "a"})
    b = state.enqueue("ci", {"body": "b"})
    assert a.txn_id != b.txn_id
    assert state.next_pending() == a
    state.delivered(a.delivery_id, "$a")
    assert state.next_pending() == b
    state.failed(b.delivery_id, "403 M_FORBIDDEN: no")
    assert state.next_pending() is None
    assert state.outcome(a.delivery_id) == ("sent", "$a", None)
    assert state.outcome(b.delivery_id) == ("failed", None, "403 M_FORBIDDEN: no")
    # The first message under a key stays; forgetting ends the episode.
    state.remember(["group", "fp1"], [], "!r", "$first")
    state.remember(["group", "fp2"], [], "!r", "$second")
    assert state.message_for(["nothing", "group"], "!r") == "$first"
    assert state.message_for(["fp2"], "!r") == "$second"
    assert state.message_for(["group"], "!other") is None
    state.remember([], ["group", "fp1"], "!r", "$resolved")
    assert state.message_for(["group", "fp1"], "!r") is None
    state.close()
    # Reopened, it is all still there; prune drops what is finished and old.
    state = State(tmp_path / "sub" / "state.db")
    assert not state.first_seen("txn1")
    state.prune(keep_ms=-1000)
    assert state.first_seen("txn1")
    assert state.db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 0
    c = state.enqueue("ci", {"body": "c"})
    state.prune(keep_ms=-1000)
    assert state.next_pending() == c  # pending messages are never pruned
    state.close()


# ======================================================================= bot


def test_command_parsing() -> None:
    assert parse_command("!stock SKU-1", "!") == ("stock", ["SKU-1"])
    assert parse_command('!crm find "ACME Corp" now', "!") == ("crm", ["find", "ACME Corp", "now"])
    assert parse_command('!crm "unbalanced', "!") == ("crm", ['"unbalanced'])
    assert parse_command("!HELP", "!") == ("help", [])
    assert parse_command("! stock", "!") is None
    assert parse_command("stock", "!") is None
    assert parse_command("!", "!") is None
    assert strip_reply_fallback("> <@alice:x> original\n> more\n\n!task urgent") == "!task urgent"
    assert strip_reply_fallback("!task") == "!task"
    cmd = Command(name="s", url="http://erp/{arg2}/{args}", reply="{x}")
    assert needed_args(cmd) == 2
    assert needed_args(Command(name="s", url="http://erp/all", reply="{x}")) == 0
    assert fill_body({"a": ["{title}", 1, None], "b": {"c": "{link}"}}, {"title": "T", "link": "L"}) == {
        "a": ["T", 1, None],
        "b": {"c": "L"},
    }


# ============================================================= integration
#
# The homeserver loads the two registrations from its config; the bridges
# run in this process with their own HTTP servers.

HOOK_TOKENS = {
    "ci": "ci-token-0123456789",
    "alerts": "am-token-0123456789",
    "grafana": "gr-token-0123456789",
    "crm": "crm-token-0123456789",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def bridge_ports() -> dict[str, int]:
    return {"webhooks": free_port(), "bot": free_port()}


@pytest.fixture
def config_overrides(tmp_path: Path, bridge_ports: dict[str, int]) -> dict[str, Any]:
    """The homeserver's config: the registrations `generate-registration` writes."""
    doc = bridges_doc("http://127.0.0.1:1", bridge_ports)
    write_bridges_config(tmp_path / "bridges.yaml", doc)
    for name in ("webhooks", "bot"):
        assert bridges_main(["generate-registration", name, "-c", str(tmp_path / "bridges.yaml")]) == 0
    return {"app_service_config_files": ["webhooks-registration.yaml", "bot-registration.yaml"]}


def bridges_doc(hs_url: str, ports: dict[str, int], **bot: Any) -> dict[str, Any]:
    retry = {"initial": "50ms", "max": "400ms"}
    return base_config(
        homeserver={"url": hs_url, "server_name": SERVER_NAME},
        webhooks={
            "registration": "webhooks-registration.yaml",
            "listen": {"host": "127.0.0.1", "port": ports["webhooks"]},
            "display_name": "Webhooks",
            "response_timeout": "3s",
            "retry": retry,
            "max_body_size": 4096,
            "hooks": [
                {"name": "ci", "type": "slack", "token": HOOK_TOKENS["ci"], "room": "#builds:test.local",
                 "display_name": "CI server", "avatar_url": "mxc://test.local/ci"},
                {"name": "alerts", "type": "alertmanager", "token": HOOK_TOKENS["alerts"],
                 "room": "#builds:test.local", "display_name": "Alertmanager"},
                {"name": "grafana", "type": "grafana", "token": HOOK_TOKENS["grafana"],
                 "room": "#builds:test.local"},
                {"name": "crm", "type": "template", "token": HOOK_TOKENS["crm"], "room": "#builds:test.local",
                 "template": "New lead: {name}, {company}, {amount}", "msgtype": "m.notice"},
            ],
        },
        bot={
            "registration": "bot-registration.yaml",
            "listen": {"host": "127.0.0.1", "port": ports["bot"]},
            "display_name": "Helper bot",
            "retry": retry,
            **bot,
        },
    )


class Bridges:
    """The bridges running against the test homeserver, and a user in a room with them."""

    def __init__(self, server: TestServer, tmp_path: Path, ports: dict[str, int]) -> None:
        self.server = server
        self.tmp_path = tmp_path
        self.ports = ports
        self.running: list[tuple[AppService, web.AppRunner]] = []
        self.http = aiohttp.ClientSession()

    async def start(self, kind: type[AppService], hs_url: str | None = None, **bot: Any) -> Any:
        doc = bridges_doc(hs_url or self.server.url, self.ports, **bot)
        config = parse_config(doc, str(self.tmp_path))
        bridge = kind(config)
        runner = web.AppRunner(bridge.build_app(), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.ports[bridge.name]).start()
        await bridge.start()
        self.running.append((bridge, runner))
        return bridge

    async def stop(self) -> None:
        for bridge, runner in reversed(self.running):
            await runner.cleanup()
            await bridge.stop()
        await self.http.close()

    async def hook(self, name: str, payload: Any = None, **kw: Any) -> tuple[int, Any]:
        url = f"http://127.0.0.1:{self.ports['webhooks']}/hooks/{HOOK_TOKENS.get(name, name)}"
        async with self.http.post(url, json=payload, **kw) as resp:
            raw = await resp.read()
            try:
                return resp.status, json.loads(raw)
            except ValueError:
                return resp.status, raw.decode()


@pytest.fixture
async def bridges(server: TestServer, tmp_path: Path, bridge_ports: dict[str, int]) -> AsyncIterator[Bridges]:
    b = Bridges(server, tmp_path, bridge_ports)
    try:
        yield b
    finally:
        await b.stop()


async def create_room(server: TestServer, token: str, **body: Any) -> str:
    resp = await server.post(f"{V3}/createRoom", body, token=token)
    assert resp.status == 200, resp.body
    return resp.body["room_id"]


async def messages(server: TestServer, token: str, room_id: str) -> list[dict[str, Any]]:
    """The room's m.room.message events, oldest first, as a normal client reads them."""
    resp = await server.get(
        f"{V3}/rooms/{quote(room_id, safe='')}/messages", token=token, params={"dir": "b", "limit": "100"}
    )
    assert resp.status == 200, resp.body
    return [e for e in reversed(resp.body["chunk"]) if e["type"] == "m.room.message"]


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        await asyncio.sleep(0.05)


async def send_text(server: TestServer, token: str, room_id: str, body: str, **content: Any) -> str:
    resp = await server.put(
        f"{V3}/rooms/{quote(room_id, safe='')}/send/m.room.message/t{time.monotonic_ns()}",
        {"msgtype": "m.text", "body": body, **content},
        token=token,
    )
    assert resp.status == 200, resp.body
    return resp.body["event_id"]


async def public_builds_room(server: TestServer) -> tuple[str, str]:
    token = (await server.register_user("alice"))["access_token"]
    room_id = await create_room(server, token, preset="public_chat", room_alias_name="builds")
    return token, room_id


# ---------------------------------------------------------------- webhooks


async def test_slack_hook_posts_as_its_ghost(server: TestServer, bridges: Bridges) -> None:
    token, room_id = await public_builds_room(server)
    await bridges.start(WebhooksBridge)
    status, body = await bridges.hook("ci", {"text": "Build *#42* passed: <https://ci.example.com/42|details>"})
    assert (status, body) == (200, "ok")
    (event,) = await messages(server, token, room_id)
    assert event["sender"] == "@_webhook_ci:test.local"
    assert event["content"] == {
        "msgtype": "m.text",
        "body": "Build *#42* passed: details (https://ci.example.com/42)",
        "format": "org.matrix.custom.html",
        "formatted_body": '<p>Build <strong>#42</strong> passed: <a href="https://ci.example.com/42">details</a></p>',
    }
    profile = await server.get(f"{V3}/profile/@_webhook_ci:test.local")
    assert profile.body == {"displayname": "CI server", "avatar_url": "mxc://test.local/ci"}

    # Slack's form encoding: the JSON in a `payload` field.
    status, _ = await bridges.hook(
        "ci", data={"payload": json.dumps({"attachments": SLACK_ATTACHMENTS["attachments"]})}
    )
    assert status == 200
    status, _ = await bridges.hook("ci", data={"payload": json.dumps(SLACK_BLOCKS)})
    assert status == 200
    # `curl -d '{...}'` without a Content-Type: a form by its header, JSON by its body.
    status, _ = await bridges.hook(
        "ci", data=b'{"text": "from curl"}', headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert status == 200
    events = await messages(server, token, room_id)
    assert [e["content"]["body"].split("\n")[0] for e in events] == [
        "Build *#42* passed: details (https://ci.example.com/42)",
        "Optional text that appears above the attachment block",
        "Danny Torrence left the following review for your property:",
        "from curl",
    ]


async def test_hook_text_with_nul_posts(server: TestServer, bridges: Bridges) -> None:
    token, room_id = await public_builds_room(server)
    await bridges.start(WebhooksBridge)
    assert await bridges.hook("ci", {"text": "build \u00009\u0000 done"}) == (200, "ok")
    assert await bridges.hook("ci", {"text": "<https://ok.example|x> then \u00000\u0000"}) == (200, "ok")
    # NUL is dropped from every message: it shows nothing, and a homeserver that cannot
    # store it would fail the message forever, holding up the outbox behind it.
    status, body = await bridges.hook("ci", {"text": "x", "attachments": [{"title": "T\u0000"}]})
    assert (status, body) == (200, "ok")
    status, body = await bridges.hook("crm", {"name": "A\u0000da", "company": "ACME", "amount": 1})
    assert status == 200 and body["event_id"].startswith("$")
    events = await messages(server, token, room_id)
    assert [(e["content"]["body"], e["content"]["formatted_body"]) for e in events] == [
        ("build 9 done", "<p>build 9 done</p>"),
        ("x (https://ok.example) then 0", '<p><a href="https://ok.example">x</a> then 0</p>'),
        ("x\nT", "<p>x</p><blockquote><strong>T</strong></blockquote>"),
        ("New lead: Ada, ACME, 1", "New lead: Ada, ACME, 1"),
    ]


async def test_hook_refusals_post_nothing(server: TestServer, bridges: Bridges) -> None:
    token, room_id = await public_builds_room(server)
    await bridges.start(WebhooksBridge)
    cases: list[tuple[str, dict[str, Any], int, str | None]] = [
        ("no-such-token-0123456", {"json": {"text": "x"}}, 404, "M_NOT_FOUND"),
        ("ci", {"data": b"not json", "headers": {"Content-Type": "application/json"}}, 400, "M_NOT_JSON"),
        ("ci", {"data": b"[1, 2]", "headers": {"Content-Type": "application/json"}}, 400, "M_BAD_JSON"),
        ("ci", {"data": b"", "headers": {"Content-Type": "application/json"}}, 400, "M_NOT_JSON"),
        ("ci", {"json": {"text": ""}}, 400, "M_BAD_JSON"),
        ("ci", {"json": {"attachments": "nope"}}, 400, "M_BAD_JSON"),
        ("ci", {"data": {"text": "form without payload"}}, 400, "M_NOT_JSON"),
        ("ci", {"data": {"payload": "{broken"}}, 400, "M_NOT_JSON"),
        ("ci", {"data": {"payload": "[]"}}, 400, "M_BAD_JSON"),
        ("ci", {"json": {"text": "x" * 5000}}, 413, "M_TOO_LARGE"),
        ("alerts", {"json": {"text": "a Slack payload at the Alertmanager hook"}}, 400, "M_BAD_JSON"),
        ("alerts", {"json": {**ALERTMANAGER_FIRING, "version": "2"}}, 400, "M_BAD_JSON"),
        ("crm", {"json": {"name": "Ada"}}, 400, "M_BAD_JSON"),
    ]
    for name, kw, status, errcode in cases:
        url = f"http://127.0.0.1:{bridges.ports['webhooks']}/hooks/{HOOK_TOKENS.get(name, name)}"
        async with bridges.http.post(url, **kw) as resp:
            body = await resp.json()
            assert (resp.status, body["errcode"]) == (status, errcode), (name, kw, body)
            assert body["error"]
    status, body = await bridges.hook("crm", {"name": "Ada"})
    assert body["error"] == "template payload: missing fields: company, amount"
    status, body = await bridges.hook("alerts", {"text": "x"})
    assert body["error"] == "alertmanager payload: status: required"
    # Wrong methods and paths are Matrix errors too.
    async with bridges.http.get(f"http://127.0.0.1:{bridges.ports['webhooks']}/hooks/{HOOK_TOKENS['ci']}") as resp:
        assert (resp.status, (await resp.json())["errcode"]) == (405, "M_UNRECOGNIZED")
    async with bridges.http.get(f"http://127.0.0.1:{bridges.ports['webhooks']}/nothing") as resp:
        assert (resp.status, (await resp.json())["errcode"]) == (404, "M_UNRECOGNIZED")
    assert await messages(server, token, room_id) == []


async def test_template_hook_posts_crm_event(server: TestServer, bridges: Bridges) -> None:
    token, room_id = await public_builds_room(server)
    await bridges.start(WebhooksBridge)
    status, body = await bridges.hook("crm", {"name": "Ada", "company": "ACME", "amount": 1200, "extra": [1]})
    assert status == 200 and body["event_id"].startswith("$")
    (event,) = await messages(server, token, room_id)
    assert event["event_id"] == body["event_id"]
    assert event["content"]["msgtype"] == "m.notice"
    assert event["content"]["body"] == "New lead: Ada, ACME, 1200"


async def test_alert_resolution_replies_to_its_firing_message(server: TestServer, bridges: Bridges) -> None:
    token, room_id = await public_builds_room(server)
    await bridges.start(WebhooksBridge)
    status, firing = await bridges.hook("alerts", ALERTMANAGER_FIRING)
    assert status == 200
    status, repeat = await bridges.hook("alerts", ALERTMANAGER_FIRING)
    assert status == 200
    status, resolved = await bridges.hook("alerts", alertmanager_resolved())
    assert status == 200
    # A new episode of the same group starts afresh.
    status, again = await bridges.hook("alerts", ALERTMANAGER_FIRING)
    assert status == 200
    status, grafana = await bridges.hook("grafana", GRAFANA_FIRING)
    assert status == 200
    events = {e["event_id"]: e for e in await messages(server, token, room_id)}
    assert len(events) == 5
    first = events[firing["event_id"]]
    assert first["content"]["body"].startswith("🔴 FIRING: ProbeFailure [critical]")
    assert "m.relates_to" not in first["content"]
    for reply in (repeat, resolved):
        assert events[reply["event_id"]]["content"]["m.relates_to"] == {
            "m.in_reply_to": {"event_id": firing["event_id"]}
        }
    assert events[resolved["event_id"]]["content"]["body"].startswith("✅ RESOLVED: ProbeFailure")
    assert "m.relates_to" not in events[again["event_id"]]["content"]
    assert events[grafana["event_id"]]["sender"] == "@_webhook_grafana:test.local"


async def test_private_room_needs_an_invitation(server: TestServer, bridges: Bridges) -> None:
    token = (await server.register_user("alice"))["access_token"]
    room_id = await create_room(server, token, preset="private_chat", room_alias_name="builds")
    await bridges.start(WebhooksBridge)
    status, body = await bridges.hook("crm", {"name": "Ada", "company": "ACME", "amount": 1})
    assert status == 502 and body["errcode"] == "M_UNKNOWN"
    assert "invite @_webhooks:test.local" in body["error"]
    # Invited, the bridge user joins (from the homeserver's transaction) and brings the ghost in.
    resp = await server.post(
        f"{V3}/rooms/{quote(room_id, safe='')}/invite", {"user_id": "@_webhooks:test.local"}, token=token
    )
    assert resp.status == 200, resp.body

    async def bot_joined() -> bool:
        resp = await server.get(f"{V3}/rooms/{quote(room_id, safe='')}/joined_members", token=token)
        return "@_webhooks:test.local" in resp.body.get("joined", {})

    await eventually(bot_joined)
    status, body = await bridges.hook("crm", {"name": "Ada", "company": "ACME", "amount": 2})
    assert status == 200, body
    (event,) = await messages(server, token, room_id)
    assert (event["sender"], event["content"]["body"]) == ("@_webhook_crm:test.local", "New lead: Ada, ACME, 2")
    # A ghost invited before its hook ever posted is created on the homeserver's query, and joins.
    room2 = await create_room(server, token, preset="private_chat")
    resp = await server.post(
        f"{V3}/rooms/{quote(room2, safe='')}/invite", {"user_id": "@_webhook_grafana:test.local"}, token=token
    )
    assert resp.status == 200, resp.body

    async def ghost_joined() -> bool:
        resp = await server.get(f"{V3}/rooms/{quote(room2, safe='')}/joined_members", token=token)
        return "@_webhook_grafana:test.local" in resp.body.get("joined", {})

    await eventually(ghost_joined)


async def test_transactions_need_the_hs_token(server: TestServer, bridges: Bridges) -> None:
    bridge = await bridges.start(WebhooksBridge)
    base = f"http://127.0.0.1:{bridges.ports['webhooks']}/_matrix/app/v1"
    for headers, params, status, errcode in [
        ({}, {}, 401, "M_UNAUTHORIZED"),
        ({"Authorization": "Bearer wrong"}, {}, 403, "M_FORBIDDEN"),
        ({}, {"access_token": "wrong"}, 403, "M_FORBIDDEN"),
        ({"Authorization": f"Bearer {bridge.section.hs_token}"}, {"access_token": "wrong"}, 403, "M_FORBIDDEN"),
    ]:
        async with bridges.http.put(f"{base}/transactions/1", json={"events": []}, headers=headers, params=params) as resp:
            assert (resp.status, (await resp.json())["errcode"]) == (status, errcode)
    auth = {"Authorization": f"Bearer {bridge.section.hs_token}"}
    async with bridges.http.put(f"{base}/transactions/1", json={"events": "x"}, headers=auth) as resp:
        assert (resp.status, (await resp.json())["errcode"]) == (400, "M_BAD_JSON")
    async with bridges.http.put(f"{base}/transactions/1", data=b"{", headers=auth) as resp:
        assert (resp.status, (await resp.json())["errcode"]) == (400, "M_NOT_JSON")
    async with bridges.http.put(f"{base}/transactions/1", json={"events": []}, headers=auth) as resp:
        assert (resp.status, await resp.json()) == (200, {})
    async with bridges.http.get(f"{base}/users/@nobody:test.local", headers=auth) as resp:
        assert (resp.status, (await resp.json())["errcode"]) == (404, "M_NOT_FOUND")
    async with bridges.http.post(f"{base}/ping", json={"transaction_id": "t"}, headers=auth) as resp:
        assert (resp.status, await resp.json()) == (200, {})
    # The homeserver's ping reaches the bridge with the right token.
    resp = await server.post(
        "/_matrix/client/v1/appservice/webhooks/ping", {"transaction_id": "meow"}, token=bridge.section.as_token
    )
    assert resp.status == 200, resp.body
    assert isinstance(resp.body["duration_ms"], int)


# -------------------------------------------------- homeserver going down


class FlakyProxy:
    """Forwards to the homeserver; can be 'down', or lose the responses of sends it forwarded."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.down = False
        self.lose_send_responses = 0
        self.forwarded_sends = 0
        self.paths: list[str] = []
        self.http = aiohttp.ClientSession(auto_decompress=False)
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        port = free_port()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        await self.http.close()
        if self.runner is not None:
            await self.runner.cleanup()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.paths.append(request.raw_path)
        if self.down:
            return web.Response(status=502, text="Bad Gateway")
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        async with self.http.request(
            request.method, URL(self.target + request.raw_path, encoded=True), data=body, headers=headers
        ) as resp:
            raw = await resp.read()
            status = resp.status
        if request.method == "PUT" and "/send/" in request.path:
            self.forwarded_sends += 1
            if self.lose_send_responses > 0:
                # The homeserver stored the event; the bridge never hears so.
                self.lose_send_responses -= 1
                return web.Response(status=504, text="Gateway Timeout")
        return web.Response(status=status, body=raw, content_type="application/json")


@pytest.fixture
async def proxy(server: TestServer) -> AsyncIterator[FlakyProxy]:
    p = FlakyProxy(server.url)
    await p.start()
    try:
        yield p
    finally:
        await p.stop()


async def test_lost_responses_still_post_exactly_once(
    server: TestServer, bridges: Bridges, proxy: FlakyProxy
) -> None:
    token, room_id = await public_builds_room(server)
    await bridges.start(WebhooksBridge, hs_url=proxy.url)
    proxy.lose_send_responses = 2
    status, body = await bridges.hook("crm", {"name": "Ada", "company": "ACME", "amount": 3})
    assert status == 200, body
    assert proxy.forwarded_sends == 3
    (event,) = await messages(server, token, room_id)
    assert event["event_id"] == body["event_id"]


async def test_homeserver_down_queues_and_posts_once_it_is_back(
    server: TestServer, bridges: Bridges, proxy: FlakyProxy
) -> None:
    token, room_id = await public_builds_room(server)
    bridge = await bridges.start(WebhooksBridge, hs_url=proxy.url)
    bridge.settings.response_timeout = 300
    # Ghost joined while the homeserver is up, then it goes down.
    assert (await bridges.hook("ci", {"text": "first"}))[0] == 200
    proxy.down = True
    status, body = await bridges.hook("alerts", ALERTMANAGER_FIRING)
    assert status == 202 and body["queued"] is True
    status, body = await bridges.hook("alerts", alertmanager_resolved())
    assert status == 202
    await asyncio.sleep(0.5)  # several retries fail meanwhile
    assert len(await messages(server, token, room_id)) == 1
    proxy.down = False

    async def both_posted() -> list[dict[str, Any]] | None:
        events = await messages(server, token, room_id)
        return events if len(events) == 3 else None

    events = await eventually(both_posted)
    await asyncio.sleep(0.3)
    events = await messages(server, token, room_id)
    assert [e["content"]["body"].split(":")[0] for e in events] == ["first", "🔴 FIRING", "✅ RESOLVED"]
    # Posted in order, so the resolution still replies to its firing message.
    assert events[2]["content"]["m.relates_to"]["m.in_reply_to"]["event_id"] == events[1]["event_id"]


async def test_queued_messages_survive_a_bridge_restart(
    server: TestServer, bridges: Bridges, proxy: FlakyProxy
) -> None:
    token, room_id = await public_builds_room(server)
    bridge = await bridges.start(WebhooksBridge, hs_url=proxy.url)
    bridge.settings.response_timeout = 200
    proxy.down = True
    status, _ = await bridges.hook("crm", {"name": "Ada", "company": "ACME", "amount": 4})
    assert status == 202
    # The bridge stops before the homeserver is back.
    b, runner = bridges.running.pop()
    await runner.cleanup()
    await b.stop()
    proxy.down = False
    await bridges.start(WebhooksBridge, hs_url=proxy.url)

    async def posted() -> list[dict[str, Any]]:
        return await messages(server, token, room_id)

    (event,) = await eventually(posted)
    assert event["content"]["body"] == "New lead: Ada, ACME, 4"


# ---------------------------------------------------------- command bot


class LocalService:
    """A small aiohttp server standing in for the ERP or the task tracker."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self, routes: list[web.RouteDef]) -> None:
        app = web.Application()
        app.add_routes(routes)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        port = free_port()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def erp() -> AsyncIterator[LocalService]:
    service = LocalService()
    stock = {"SKU-1": {"sku": "SKU-1", "quantity": 42, "warehouse": {"name": "Berlin"}}}

    async def get_stock(request: web.Request) -> web.Response:
        service.requests.append({"path": request.raw_path, "auth": request.headers.get("Authorization")})
        item = stock.get(request.match_info["sku"])
        if item is None:
            return web.json_response({"error": "no such article"}, status=404)
        return web.json_response(item)

    async def broken(request: web.Request) -> web.Response:
        return web.Response(status=500, text="boom")

    await service.start([web.get("/stock/{sku}", get_stock), web.get("/broken", broken)])
    try:
        yield service
    finally:
        await service.stop()


@pytest.fixture
async def tracker() -> AsyncIterator[LocalService]:
    service = LocalService()

    async def create_issue(request: web.Request) -> web.Response:
        service.requests.append({"body": await request.json(), "auth": request.headers.get("X-Api-Key")})
        key = f"OPS-{len(service.requests)}"
        return web.json_response({"id": key, "self": {"url": f"https://tracker.example.com/browse/{key}"}}, status=201)

    await service.start([web.post("/issues", create_issue)])
    try:
        yield service
    finally:
        await service.stop()


async def invite_bot(server: TestServer, token: str, room_id: str, bot: str = "@_bot:test.local") -> None:
    resp = await server.post(f"{V3}/rooms/{quote(room_id, safe='')}/invite", {"user_id": bot}, token=token)
    assert resp.status == 200, resp.body

    async def joined() -> bool:
        resp = await server.get(f"{V3}/rooms/{quote(room_id, safe='')}/joined_members", token=token)
        return bot in resp.body.get("joined", {})

    await eventually(joined)


async def bot_replies(server: TestServer, token: str, room_id: str, count: int) -> list[dict[str, Any]]:
    async def check() -> list[dict[str, Any]] | None:
        replies = [e for e in await messages(server, token, room_id) if e["sender"] == "@_bot:test.local"]
        return replies if len(replies) >= count else None

    replies = await eventually(check)
    return replies


async def test_command_bot_answers_from_the_erp(
    server: TestServer, bridges: Bridges, erp: LocalService
) -> None:
    token = (await server.register_user("alice"))["access_token"]
    sales = await create_room(server, token, preset="private_chat", room_alias_name="sales")
    other = await create_room(server, token, preset="private_chat")
    await bridges.start(
        CommandBot,
        commands=[
            {
                "name": "stock",
                "description": "Stock level of an article",
                "usage": "SKU",
                "url": erp.url + "/stock/{arg1}",
                "headers": {"Authorization": "Bearer erp-secret"},
                "reply": "{sku}: {quantity} in stock at {warehouse.name}",
                "html_reply": "<b>{sku}</b>: {quantity}",
                "not_found": "No article {arg1}.",
                "rooms": ["#sales:test.local"],
            },
            {"name": "broken", "url": erp.url + "/broken", "reply": "{x}"},
            {"name": "missing", "url": erp.url + "/stock/SKU-1", "reply": "{price}"},
        ],
    )
    await invite_bot(server, token, sales)
    await invite_bot(server, token, other)
    profile = await server.get(f"{V3}/profile/@_bot:test.local")
    assert profile.body.get("displayname") == "Helper bot"

    asked = await send_text(server, token, sales, "!stock SKU-1")
    (reply,) = await bot_replies(server, token, sales, 1)
    assert reply["content"] == {
        "msgtype": "m.notice",
        "body": "SKU-1: 42 in stock at Berlin",
        "format": "org.matrix.custom.html",
        "formatted_body": "<b>SKU-1</b>: 42",
        "m.relates_to": {"m.in_reply_to": {"event_id": asked}},
    }
    assert erp.requests == [{"path": "/stock/SKU-1", "auth": "Bearer erp-secret"}]

    for text in ("!stock NOPE/../1", "!stock", "!broken", "!missing", "!nosuch", "!help", "just chatting"):
        await send_text(server, token, sales, text)
    replies = await bot_replies(server, token, sales, 7)
    assert [r["content"]["body"] for r in replies[1:]] == [
        "No article NOPE/../1.",
        "Usage: !stock SKU",
        f"!broken failed: {erp.url.removeprefix('http://')} answered HTTP 500.",
        f"!missing failed: unexpected answer from {erp.url.removeprefix('http://')} (missing field: price).",
        "Unknown command !nosuch. Try !help.",
        "Commands in this room:\n!stock SKU — Stock level of an article\n!broken\n!missing\n!help — this list",
    ]
    # The argument is URL-encoded: it stays one path segment.
    assert erp.requests[1]["path"] == "/stock/NOPE%2F..%2F1"

    # Outside #sales, !stock is not offered.
    await send_text(server, token, other, "!stock SKU-1")
    await send_text(server, token, other, "!help")
    replies = await bot_replies(server, token, other, 2)
    assert [r["content"]["body"] for r in replies] == [
        "!stock is not available in this room.",
        "Commands in this room:\n!broken\n!missing\n!help — this list",
    ]
    assert [r["path"] for r in erp.requests if r["auth"]] == ["/stock/SKU-1", "/stock/NOPE%2F..%2F1"]


async def test_command_arguments_cannot_climb_the_url(server: TestServer, bridges: Bridges) -> None:
    erp = LocalService()

    async def anything(request: web.Request) -> web.Response:
        erp.requests.append({"path": request.raw_path, "auth": request.headers.get("Authorization")})
        return web.json_response({"sku": request.match_info["tail"], "quantity": 1})

    await erp.start([web.route("*", "/{tail:.*}", anything)])
    try:
        token = (await server.register_user("alice"))["access_token"]
        room_id = await create_room(server, token, preset="private_chat")
        await bridges.start(CommandBot, commands=[
            {"name": "stock", "url": erp.url + "/api/v1/stock/{arg1}/level?at={arg2}",
             "headers": {"Authorization": "Bearer erp-secret"}, "reply": "{sku}: {quantity}"},
        ])
        await invite_bot(server, token, room_id)
        typed = ["!stock .. x", "!stock . x", '!stock "" x', "!stock ... x", "!stock x ..",
                 "!stock %2E%2E ..x", "!stock v1.2 ../.."]
        for text in typed:
            await send_text(server, token, room_id, text)
        replies = await bot_replies(server, token, room_id, len(typed))
        refused = "!stock: an argument cannot be empty or only dots."
        assert [r["content"]["body"] for r in replies] == [refused] * 5 + [
            "api/v1/stock/%2E%2E/level: 1",
            "api/v1/stock/v1.2/level: 1",
        ]
        # Sent exactly as rendered: nothing decoded, no dot segment resolved.
        assert erp.requests == [
            {"path": "/api/v1/stock/%252E%252E/level?at=..x", "auth": "Bearer erp-secret"},
            {"path": "/api/v1/stock/v1.2/level?at=..%2F..", "auth": "Bearer erp-secret"},
        ]
    finally:
        await erp.stop()


async def test_event_ids_from_events_stay_one_path_segment(
    server: TestServer, bridges: Bridges, proxy: FlakyProxy
) -> None:
    alice = await server.register_user("alice")
    room_id = await create_room(server, alice["access_token"], preset="public_chat")
    await bridges.start(CommandBot, hs_url=proxy.url, task_hooks=[{"name": "tracker", "url": "http://127.0.0.1:1/x"}])
    await invite_bot(server, alice["access_token"], room_id)
    # A reply naming event ".." asks the homeserver for event "..", not for the room.
    await send_text(
        server, alice["access_token"], room_id, "!task", **{"m.relates_to": {"m.in_reply_to": {"event_id": ".."}}}
    )
    (reply,) = await bot_replies(server, alice["access_token"], room_id, 1)
    assert reply["content"]["body"] == "That message cannot be read by the bot, so it cannot be filed."
    fetched = [p.split("?")[0] for p in proxy.paths if p.startswith(f"{V3}/rooms/") and "/send/" not in p]
    assert fetched == [f"{V3}/rooms/{quote(room_id, safe='')}/event/.."]


async def test_reaction_and_task_reply_file_tasks(
    server: TestServer, bridges: Bridges, tracker: LocalService
) -> None:
    alice = await server.register_user("alice")
    bob = await server.register_user("bob")
    room_id = await create_room(server, alice["access_token"], preset="public_chat")
    resp = await server.post(f"{V3}/join/{quote(room_id, safe='')}", {}, token=bob["access_token"])
    assert resp.status == 200
    await bridges.start(
        CommandBot,
        task_hooks=[
            {
                "name": "tracker",
                "reaction": "✅",
                "command": "task",
                "url": tracker.url + "/issues",
                "headers": {"X-Api-Key": "tracker-secret"},
                "body": {"fields": {"summary": "{title}", "description": "{body}\n\nFrom {sender}: {link}",
                                    "labels": ["chat", "{reporter}"]}},
                "link_field": "self.url",
            }
        ],
    )
    await invite_bot(server, alice["access_token"], room_id)
    message = await send_text(server, bob["access_token"], room_id, "Printer on floor 3 is broken\nIt jams.")
    resp = await server.put(
        f"{V3}/rooms/{quote(room_id, safe='')}/send/m.reaction/r1",
        {"m.relates_to": {"rel_type": "m.annotation", "event_id": message, "key": "✅"}},
        token=alice["access_token"],
    )
    assert resp.status == 200
    (reply,) = await bot_replies(server, alice["access_token"], room_id, 1)
    assert reply["content"]["body"] == "Task created: https://tracker.example.com/browse/OPS-1"
    assert reply["content"]["formatted_body"] == (
        'Task created: <a href="https://tracker.example.com/browse/OPS-1">https://tracker.example.com/browse/OPS-1</a>'
    )
    assert reply["content"]["m.relates_to"] == {
        "rel_type": "m.thread",
        "event_id": message,
        "is_falling_back": True,
        "m.in_reply_to": {"event_id": message},
    }
    (filed,) = tracker.requests
    assert filed["auth"] == "tracker-secret"
    assert filed["body"] == {
        "fields": {
            "summary": "Printer on floor 3 is broken",
            "description": f"Printer on floor 3 is broken\nIt jams.\n\nFrom @bob:test.local: "
            f"https://matrix.to/#/{room_id}/{message}?via=test.local",
            "labels": ["chat", "@alice:test.local"],
        }
    }

    # The same message again (another reaction, or !task): filed once.
    resp = await server.put(
        f"{V3}/rooms/{quote(room_id, safe='')}/send/m.reaction/r2",
        {"m.relates_to": {"rel_type": "m.annotation", "event_id": message, "key": "✅"}},
        token=bob["access_token"],
    )
    assert resp.status == 200
    again = await send_text(
        server, alice["access_token"], room_id, "!task", **{"m.relates_to": {"m.in_reply_to": {"event_id": message}}}
    )
    replies = await bot_replies(server, alice["access_token"], room_id, 2)
    assert replies[1]["content"]["body"] == "Already filed: https://tracker.example.com/browse/OPS-1"
    assert replies[1]["content"]["m.relates_to"] == {"m.in_reply_to": {"event_id": again}}
    assert len(tracker.requests) == 1

    # A !task reply to a message in a thread: answered in that thread.
    root = await send_text(server, bob["access_token"], room_id, "Kitchen topics")
    threaded = await send_text(
        server, bob["access_token"], room_id, "Coffee machine leaks",
        **{"m.relates_to": {"rel_type": "m.thread", "event_id": root, "is_falling_back": True,
                            "m.in_reply_to": {"event_id": root}}},
    )
    await send_text(
        server, alice["access_token"], room_id, "> <@bob:test.local> Coffee machine leaks\n\n!task urgent",
        **{"m.relates_to": {"rel_type": "m.thread", "event_id": root, "is_falling_back": False,
                            "m.in_reply_to": {"event_id": threaded}}},
    )
    replies = await bot_replies(server, alice["access_token"], room_id, 3)
    assert replies[2]["content"]["body"] == "Task created: https://tracker.example.com/browse/OPS-2"
    assert replies[2]["content"]["m.relates_to"] == {
        "rel_type": "m.thread",
        "event_id": root,
        "is_falling_back": False,
        "m.in_reply_to": {"event_id": threaded},
    }
    assert tracker.requests[1]["body"]["fields"]["summary"] == "Coffee machine leaks"
    # !task without a message to file says how to use it; other reactions do nothing.
    await send_text(server, alice["access_token"], room_id, "!task")
    replies = await bot_replies(server, alice["access_token"], room_id, 4)
    assert replies[3]["content"]["body"] == "Reply to a message with !task to file it in tracker."
    assert len(tracker.requests) == 2


async def test_tracker_failures_are_answered(server: TestServer, bridges: Bridges) -> None:
    alice = await server.register_user("alice")
    room_id = await create_room(server, alice["access_token"], preset="public_chat")
    dead = f"http://127.0.0.1:{free_port()}/issues"
    await bridges.start(CommandBot, task_hooks=[{"name": "tracker", "url": dead}])
    await invite_bot(server, alice["access_token"], room_id)
    message = await send_text(server, alice["access_token"], room_id, "Something to file")
    resp = await server.put(
        f"{V3}/rooms/{quote(room_id, safe='')}/send/m.reaction/r1",
        {"m.relates_to": {"rel_type": "m.annotation", "event_id": message, "key": "✅"}},
        token=alice["access_token"],
    )
    assert resp.status == 200
    (reply,) = await bot_replies(server, alice["access_token"], room_id, 1)
    assert reply["content"]["body"] == (
        f"Could not file the message in tracker: {dead.split('/')[2]} cannot be reached."
    )
    assert reply["content"]["m.relates_to"]["rel_type"] == "m.thread"
