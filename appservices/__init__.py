"""The application-service API (spec: Application Service API).

`registration` loads and checks the registration files; `service` holds the
registered application services and answers the core's hook points
(authentication with an `as_token`, exclusive namespaces, user and alias
queries); `sender` pushes events to them as transactions; `api` is the
client-server extension they call (`/appservice/{id}/ping`). The core knows
none of this: the composition root (`homeserver/app.py`) wires it in.
"""
