"""The bundled bridges and bots: separate processes that talk to the homeserver
over the application-service API.

- `webhooks`: Slack-compatible, Alertmanager, Grafana and template hooks post
  into rooms (`webhooks.py`);
- `bot`: `!`-commands answered from HTTP lookups, and messages filed as
  tasks in a tracker (`bot.py`).

Run one with `python3 -m appservices.bridges webhooks -c bridges.yaml`; see
docs/bridges.md.
"""
