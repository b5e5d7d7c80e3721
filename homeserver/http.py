"""HTTP plumbing shared by every API module.

One middleware wraps every request: it answers CORS preflights, gives the
request an id, turns every failure into a Matrix error body (never a
traceback), and records the access log line and Prometheus metrics. The
helpers below parse request bodies and parameters into clean Matrix errors.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import web
from prometheus_client import Counter, Gauge, Histogram

from .errors import MatrixError, bad_json, invalid_param, missing_param, unrecognized

logger = logging.getLogger("homeserver.access")
error_logger = logging.getLogger("homeserver.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

REQUESTS = Counter(
    "homeserver_http_requests_total",
    "HTTP requests by route template, method and status",
    ["method", "route", "status"],
)
REQUEST_SECONDS = Histogram(
    "homeserver_http_request_duration_seconds",
    "HTTP request latency by route template and method",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
IN_FLIGHT = Gauge("homeserver_http_requests_in_flight", "HTTP requests being handled")

CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, HEAD, POST, PUT, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "X-Requested-With, Content-Type, Authorization, Date",
    "Access-Control-Expose-Headers": "X-Request-Id",
}

_request_ids = itertools.count(1)

MAX_BODY_KEY = web.AppKey("max_request_body_size", int)
# Listener options: trust X-Forwarded-For; gzip responses for clients that accept it.
X_FORWARDED_KEY = web.AppKey("x_forwarded", bool)
COMPRESS_KEY = web.AppKey("compress", bool)
# Below this many bytes compression costs more than it saves.
_COMPRESS_MIN_BYTES = 1024
REQUEST_ID = web.RequestKey("request_id", str)
# Set once the request is authenticated, for the access log.
USER_ID = web.RequestKey("user_id", str)


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode(),
        status=status,
        content_type="application/json",
    )


def error_response(err: MatrixError) -> web.Response:
    # ASCII escapes: an error message may quote client input that is not
    # valid Unicode (a lone surrogate), and must still be sent.
    return web.Response(
        body=json.dumps(err.to_json(), separators=(",", ":")).encode(),
        status=err.status,
        content_type="application/json",
    )


def route_label(request: web.Request) -> str:
    """The route template (`/_matrix/client/v3/profile/{userId}`), never the raw path."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def _from_http_exception(exc: web.HTTPException) -> MatrixError:
    if exc.status == 404:
        return unrecognized("Unrecognized request")
    if exc.status == 405:
        return unrecognized("Method not allowed for this endpoint", status=405)
    if exc.status == 413:
        return MatrixError(413, "M_TOO_LARGE", "Request body too large")
    return MatrixError(exc.status, "M_UNKNOWN", exc.reason or "Error")


@web.middleware
async def request_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = f"{request.method}-{next(_request_ids)}"
    if request.app[X_FORWARDED_KEY]:
        forwarded = request.headers.get("X-Forwarded-For")
        if forwarded:
            request = request.clone(remote=forwarded.split(",", 1)[0].strip())
    request[REQUEST_ID] = request_id
    if request.method == "OPTIONS":
        return web.Response(status=204, headers={**CORS_HEADERS, "X-Request-Id": request_id})
    start = time.perf_counter()
    IN_FLIGHT.inc()
    try:
        try:
            if "\x00" in request.path or "%00" in request.raw_path:
                # PostgreSQL text cannot hold NUL; no Matrix identifier contains one.
                raise invalid_param("NUL characters are not allowed in the path or query")
            response = await handler(request)
        except MatrixError as err:
            response = error_response(err)
        except web.HTTPException as exc:
            response = error_response(_from_http_exception(exc))
        except Exception:
            error_logger.exception("%s: unhandled error on %s %s", request_id, request.method, request.path)
            response = error_response(MatrixError(500, "M_UNKNOWN", "Internal server error"))
    finally:
        IN_FLIGHT.dec()
    duration = time.perf_counter() - start
    route = route_label(request)
    REQUESTS.labels(request.method, route, str(response.status)).inc()
    REQUEST_SECONDS.labels(request.method, route).observe(duration)
    response.headers.update(CORS_HEADERS)
    response.headers["X-Request-Id"] = request_id
    if (
        request.app[COMPRESS_KEY]
        and isinstance(response, web.Response)
        and response.body is not None
        and len(response.body) >= _COMPRESS_MIN_BYTES
    ):
        response.enable_compression()
    logger.info(
        "%s %s %s %s %d %.1fms %s",
        request_id,
        request.remote,
        request.method,
        route,
        response.status,
        duration * 1000,
        request.get(USER_ID, "-"),
    )
    return response


# ------------------------------------------------------------------- routes


class Router:
    """Registers handlers under the API prefixes they are served at."""

    def __init__(self, app: web.Application) -> None:
        self.app = app

    def add(self, method: str, path: str, handler: Handler) -> None:
        self.app.router.add_route(method, path, handler)

    def client(
        self, method: str, path: str, handler: Handler, versions: Iterable[str] = ("v3", "r0")
    ) -> None:
        """`path` under `/_matrix/client/{version}` for each version given."""
        for version in versions:
            self.add(method, f"/_matrix/client/{version}{path}", handler)


# ------------------------------------------------------------ request bodies


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


async def read_json(request: web.Request, *, allow_empty: bool = False) -> dict[str, Any]:
    """The request body as a JSON object, or a clear M_NOT_JSON / M_BAD_JSON / M_TOO_LARGE."""
    limit = request.app[MAX_BODY_KEY]
    too_large = MatrixError(413, "M_TOO_LARGE", f"Request body is larger than {limit} bytes")
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    body = await request.read()
    if len(body) > limit:  # a chunked body carries no Content-Length
        raise too_large
    if not body.strip():
        if allow_empty:
            return {}
        raise MatrixError(400, "M_NOT_JSON", "Request body is empty; expected a JSON object")
    try:
        value = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise MatrixError(400, "M_NOT_JSON", "Request body is not valid JSON") from None
    if not isinstance(value, dict):
        raise bad_json("Request body must be a JSON object")
    if _NUL_ESCAPE.search(body) and _has_nul_key(value):
        # Object keys are IDs (users, devices, rooms, key IDs), which no
        # database column can hold with a NUL in them.
        raise bad_json("Object keys may not contain NUL characters")
    if _SURROGATE_ESCAPE.search(body):
        # `\ud800` alone parses but is not Unicode: refuse it here rather
        # than fail when it is stored or sent on.
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise bad_json("Request body contains an unpaired UTF-16 surrogate") from None
    return value


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_NUL_ESCAPE = re.compile(rb"\\u0000")


def _has_nul_key(value: Any) -> bool:
    if isinstance(value, dict):
        return any("\x00" in k or _has_nul_key(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul_key(v) for v in value)
    return False


_MISSING = object()


def body_str(
    body: dict[str, Any], key: str, default: Any = _MISSING, *, max_length: int = 65536
) -> Any:
    """A string field: M_MISSING_PARAM if required and absent, M_BAD_JSON if not a string."""
    value = body.get(key, _MISSING)
    if value is _MISSING or (value is None and default is not _MISSING):
        if default is _MISSING:
            raise missing_param(f"Missing parameter: {key}")
        return default
    if not isinstance(value, str):
        raise bad_json(f"'{key}' must be a string")
    if len(value) > max_length:
        raise bad_json(f"'{key}' is too long")
    if "\x00" in value:
        raise bad_json(f"'{key}' may not contain NUL characters")
    return value


def body_bool(body: dict[str, Any], key: str, default: bool = False) -> bool:
    value = body.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise bad_json(f"'{key}' must be true or false")
    return value


def body_dict(body: dict[str, Any], key: str, default: Any = _MISSING) -> Any:
    value = body.get(key, _MISSING)
    if value is _MISSING or value is None:
        if default is _MISSING:
            raise missing_param(f"Missing parameter: {key}")
        return default
    if not isinstance(value, dict):
        raise bad_json(f"'{key}' must be a JSON object")
    return value


def body_str_list(body: dict[str, Any], key: str) -> list[str]:
    value = body.get(key, _MISSING)
    if value is _MISSING:
        raise missing_param(f"Missing parameter: {key}")
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise bad_json(f"'{key}' must be a list of strings")
    return value


def query_str(request: web.Request, key: str, default: Any = _MISSING) -> Any:
    value = request.query.get(key)
    if value is None:
        if default is _MISSING:
            raise missing_param(f"Missing query parameter: {key}")
        return default
    return value


def query_int(request: web.Request, key: str, default: int | None = None) -> int | None:
    value = request.query.get(key)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise invalid_param(f"Query parameter '{key}' must be an integer") from None
