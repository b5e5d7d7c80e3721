"""User-interactive authentication (UIA), as the client-server spec describes it.

An endpoint that needs it calls `UserInteractiveAuth.check(...)` with the
flows it accepts. Until one flow's stages are all completed, `check` raises
a 401 whose body lists the flows, the session ID and the stages completed,
exactly as clients expect. Sessions live in the database so a multi-step
flow may be served by different processes.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

from aiohttp import web

from storage import Storage
from storage.uia import UIASession

from ..errors import MatrixError, bad_json
from ..http import body_str
from ..util import now_ms, random_token

DUMMY = "m.login.dummy"
PASSWORD = "m.login.password"
REGISTRATION_TOKEN = "m.login.registration_token"

SESSION_LIFETIME_MS = 24 * 3600 * 1000

# A stage checker receives (auth dict, session) and returns the value to
# record for the stage, or raises MatrixError(401...) on failure.
StageChecker = Callable[[dict[str, Any], UIASession], Awaitable[Any]]


class AuthFailed(MatrixError):
    """A 401 UIA response: what to do next (and, after a failed stage, why)."""

    def to_json(self) -> dict[str, Any]:
        # A plain challenge carries no errcode; one after a failed stage does.
        if not self.errcode:
            return dict(self.extra)
        return super().to_json()


class UserInteractiveAuth:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.checkers: dict[str, StageChecker] = {DUMMY: self._check_dummy}

    def register_stage(self, stage: str, checker: StageChecker) -> None:
        self.checkers[stage] = checker

    async def check(
        self,
        request: web.Request,
        body: dict[str, Any],
        flows: list[list[str]],
        *,
        params: dict[str, Any] | None = None,
        user_id: str | None = None,
        server_values: dict[str, Any] | None = None,
    ) -> tuple[dict[str, Any], dict[str, Any], UIASession]:
        """Run one UIA step; returns (completed stages, request params, session) when done.

        The params are the body of the first request of the session, updated
        (and remembered) with the fields of each later one, so a client may
        send them only once. Anything secret (a new password) must be taken
        out of `body` first and passed, hashed, as `server_values`: they are
        kept in the session's `serverdict`, which the client never sees.
        `user_id` binds the session to the signed-in user who started it.
        """
        auth = body.get("auth")
        if auth is not None and not isinstance(auth, dict):
            raise bad_json("'auth' must be a JSON object")
        clientdict = {k: v for k, v in body.items() if k != "auth"}
        session_id = body_str(auth, "session", None) if auth else None
        if session_id is None:
            session = UIASession(
                session_id=random_token(18),
                created_ts=now_ms(),
                method=request.method,
                uri=request.path,
                clientdict=clientdict,
                completed={},
                serverdict={"user_id": user_id} if user_id else {},
            )
            session.serverdict.update(server_values or {})
            await self.storage.uia.create_session(session)
        else:
            found = await self.storage.uia.get_session(session_id)
            if found is None or found.created_ts < now_ms() - SESSION_LIFETIME_MS:
                raise MatrixError(400, "M_UNKNOWN", "Unknown or expired UIA session")
            session = found
            if (session.method, session.uri) != (request.method, request.path):
                raise MatrixError(
                    403,
                    "M_FORBIDDEN",
                    "The UIA session was started for a different request",
                )
            if session.serverdict.get("user_id") != user_id:
                raise MatrixError(403, "M_FORBIDDEN", "The UIA session belongs to another user")
            if clientdict:
                session.clientdict.update(clientdict)
                await self.storage.uia.set_clientdict(session.session_id, session.clientdict)
            for key, value in (server_values or {}).items():
                await self.storage.uia.set_server_value(session.session_id, key, value)
                session.serverdict[key] = value

        stage = auth.get("type") if auth else None
        if stage is not None:
            allowed = {s for flow in flows for s in flow}
            if not isinstance(stage, str) or stage not in allowed or stage not in self.checkers:
                raise self._challenge(
                    flows, params, session, "M_UNRECOGNIZED", f"Unsupported auth stage: {stage}"
                )
            try:
                result = await self.checkers[stage](auth, session)
            except MatrixError as err:
                raise self._challenge(flows, params, session, err.errcode, err.error) from None
            session.completed = await self.storage.uia.mark_stage_completed(
                session.session_id, stage, result
            )

        for flow in flows:
            if all(s in session.completed for s in flow):
                return session.completed, session.clientdict, session
        raise self._challenge(flows, params, session)

    def _challenge(
        self,
        flows: list[list[str]],
        params: dict[str, Any] | None,
        session: UIASession,
        errcode: str | None = None,
        error: str | None = None,
    ) -> AuthFailed:
        body: dict[str, Any] = {
            "flows": [{"stages": flow} for flow in flows],
            "params": params or {},
            "session": session.session_id,
        }
        if session.completed:
            body["completed"] = list(session.completed)
        if errcode is None:
            return AuthFailed(401, "", "", **body)
        return AuthFailed(401, errcode, error or "", **body)

    async def _check_dummy(self, auth: dict[str, Any], session: UIASession) -> bool:
        return True
