"""Typed configuration, loaded from one YAML file and validated at start.

Option names follow Synapse wherever the concept is the same, so an
operator's existing knowledge (and much of an existing homeserver.yaml)
carries over. Every error names the offending key and says what was
expected. Options this server does not know are reported as warnings, not
errors, so a Synapse config can be pointed at it and trimmed at leisure.

`config.sample.yaml` documents every option here; a test keeps the two in
step.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import re
import secrets
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

logger = logging.getLogger(__name__)


class ConfigError(Exception):
    """The configuration is invalid; the message names the key and the problem."""


class Duration(int):
    """Milliseconds; written in YAML as an integer of ms or a string like `5m`, `1h`, `7d`."""


class ByteSize(int):
    """Bytes; written in YAML as an integer or a string like `50M`, `1G`, `512K`."""


_DURATION_UNITS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000,
                   "w": 604_800_000, "y": 31_536_000_000}
_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


# ------------------------------------------------------------------- sections


@dataclass
class ListenerResource:
    # client: the client-server API, /.well-known, /_synapse/admin, /health;
    # federation (or keys): server keys (/_matrix/key); metrics: /metrics;
    # health: /health alone. media is served with client; openid and
    # replication are accepted from Synapse configs and serve nothing.
    names: list[
        Literal["client", "federation", "keys", "media", "metrics", "health", "openid", "replication"]
    ] = field(default_factory=lambda: ["client", "federation"])
    compress: bool = False


@dataclass
class Listener:
    port: int = 8008
    bind_addresses: list[str] = field(default_factory=lambda: ["127.0.0.1"])
    # http serves `resources`; metrics (as in Synapse) serves /metrics only.
    type: Literal["http", "metrics"] = "http"
    tls: bool = False
    x_forwarded: bool = False
    resources: list[ListenerResource] = field(default_factory=lambda: [ListenerResource()])

    def resource_names(self) -> set[str]:
        if self.type == "metrics":
            return {"metrics"}
        return {n for r in self.resources for n in r.names}


@dataclass
class DatabaseConfig:
    # psycopg2 (Synapse's name) is accepted as an alias of psycopg.
    name: Literal["sqlite3", "psycopg", "psycopg2"] = "sqlite3"
    # sqlite3: {database: path}; psycopg: libpq keywords (user, password,
    # dbname/database, host, port, sslmode, ...) plus cp_min/cp_max pool sizes.
    args: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # As in Synapse: with no database configured, SQLite beside the config.
        if self.name == "sqlite3":
            self.args.setdefault("database", "homeserver.db")


@dataclass
class RateLimit:
    per_second: float = 0.17
    burst_count: float = 3


def _rc(per_second: float, burst_count: float) -> Any:
    return field(default_factory=lambda: RateLimit(per_second, burst_count))


@dataclass
class LoginRateLimits:
    address: RateLimit = _rc(0.003, 5)
    account: RateLimit = _rc(0.003, 5)
    failed_attempts: RateLimit = _rc(0.003, 5)


@dataclass
class PasswordConfig:
    enabled: bool = True
    # Added to every password before hashing. Changing it invalidates all
    # existing passwords, so set it once, before the first user.
    pepper: str = ""


@dataclass
class ThumbnailSize:
    width: int = 32
    height: int = 32
    # crop: exactly width x height, cut to that aspect; scale: fits inside.
    method: Literal["crop", "scale"] = "scale"


def _default_thumbnail_sizes() -> list[ThumbnailSize]:
    # Synapse's defaults, which are also the sizes the spec recommends.
    return [
        ThumbnailSize(32, 32, "crop"),
        ThumbnailSize(96, 96, "crop"),
        ThumbnailSize(320, 240, "scale"),
        ThumbnailSize(640, 480, "scale"),
        ThumbnailSize(800, 600, "scale"),
    ]


@dataclass
class PresenceConfig:
    # Off: presence is neither tracked nor sent in /sync; its endpoints
    # still answer (everyone is offline).
    enabled: bool = True


@dataclass
class SearchConfig:
    # PostgreSQL text search configuration messages are indexed and searched
    # with (stemming, stop words): english, german, french, simple, ... or a
    # custom one. SQLite always uses Unicode words with English stemming.
    language: str = "english"


@dataclass
class UserDirectoryConfig:
    enabled: bool = True
    # True (unlike Synapse): every local user can be found, as in a company
    # address book. False: only users sharing a room with the searcher or
    # joined to a public room.
    search_all_users: bool = True


@dataclass
class Config:
    server_name: str = ""
    public_baseurl: str | None = None
    listeners: list[Listener] = field(default_factory=lambda: [Listener()])
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    signing_key_path: str | None = None
    media_store_path: str = "media_store"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    enable_registration: bool = False
    registration_requires_token: bool = False
    registration_shared_secret: str | None = None
    allow_guest_access: bool = False
    password_config: PasswordConfig = field(default_factory=PasswordConfig)
    bcrypt_rounds: int = 12

    refreshable_access_token_lifetime: Duration = Duration(5 * 60_000)
    refresh_token_lifetime: Duration | None = None
    nonrefreshable_access_token_lifetime: Duration | None = None
    session_lifetime: Duration | None = None

    rc_login: LoginRateLimits = field(default_factory=LoginRateLimits)
    rc_registration: RateLimit = _rc(0.17, 3)
    rc_registration_token_validity: RateLimit = _rc(0.1, 5)
    # Per user: /sendToDevice and /keys/claim requests.
    rc_key_requests: RateLimit = _rc(20, 100)

    max_upload_size: ByteSize = ByteSize(50 * 1024**2)
    max_request_body_size: ByteSize = ByteSize(8 * 1024**2)

    # Media repository (docs/media.md).
    enable_authenticated_media: bool = True
    max_image_pixels: ByteSize = ByteSize(32 * 1024**2)
    dynamic_thumbnails: bool = False
    thumbnail_sizes: list[ThumbnailSize] = field(default_factory=_default_thumbnail_sizes)
    unused_expiration_time: Duration = Duration(24 * 3_600_000)
    max_pending_media_uploads: int = 5
    # URL previews (GET .../media/preview_url); off unless enabled.
    url_preview_enabled: bool = False
    url_preview_ip_range_blacklist: list[str] = field(default_factory=list)
    url_preview_ip_range_whitelist: list[str] = field(default_factory=list)
    url_preview_url_blacklist: list[dict[str, Any]] = field(default_factory=list)
    url_preview_url_allowlist: list[dict[str, Any]] = field(default_factory=list)
    max_spider_size: ByteSize = ByteSize(10 * 1024**2)
    # Outgoing requests to addresses users give (push gateways), as Synapse names them.
    ip_range_blacklist: list[str] = field(default_factory=list)
    ip_range_whitelist: list[str] = field(default_factory=list)

    serve_server_wellknown: bool = True
    require_auth_for_profile_requests: bool = False

    # TURN servers for VoIP calls (GET /voip/turnServer), as Synapse names them.
    turn_uris: list[str] = field(default_factory=list)
    turn_shared_secret: str | None = None
    turn_username: str | None = None
    turn_password: str | None = None
    turn_user_lifetime: Duration = Duration(3_600_000)
    turn_allow_guests: bool = True

    presence: PresenceConfig = field(default_factory=PresenceConfig)

    search: SearchConfig = field(default_factory=SearchConfig)
    user_directory: UserDirectoryConfig = field(default_factory=UserDirectoryConfig)

    # Application-service registration files (YAML), loaded and checked at start.
    app_service_config_files: list[str] = field(default_factory=list)

    # Set by `load_config`: the directory relative paths are resolved against.
    config_dir: str = field(default=".", metadata={"internal": True})

    @property
    def base_url(self) -> str:
        """public_baseurl with a trailing slash, or one derived from the first listener."""
        if self.public_baseurl:
            return self.public_baseurl.rstrip("/") + "/"
        listener = self.listeners[0]
        return f"http://localhost:{listener.port}/"

    def resolve_path(self, path: str) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else Path(self.config_dir) / p


# ------------------------------------------------------------------ the loader

_SERVER_NAME = re.compile(
    r"^(?:\[[0-9A-Fa-f:.]{2,45}\]|[0-9]{1,3}(?:\.[0-9]{1,3}){3}|[A-Za-z0-9\-.]{1,255})(?::[0-9]{1,5})?$"
)


def _parse_duration(value: Any, path: str) -> Duration:
    if isinstance(value, bool):
        raise ConfigError(f"{path}: expected a duration such as 5m or 3600000, got {value!r}")
    if isinstance(value, int):
        return Duration(value)
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+)\s*(ms|s|m|h|d|w|y)?\s*", value)
        if m:
            return Duration(int(m.group(1)) * _DURATION_UNITS[m.group(2) or "ms"])
    raise ConfigError(
        f"{path}: expected a duration such as 30s, 5m, 1h, 7d or a number of milliseconds,"
        f" got {value!r}"
    )


def _parse_size(value: Any, path: str) -> ByteSize:
    if isinstance(value, int) and not isinstance(value, bool):
        return ByteSize(value)
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)B?\s*", value.upper())
        if m:
            return ByteSize(int(m.group(1)) * _SIZE_UNITS[m.group(2)])
    raise ConfigError(f"{path}: expected a size such as 50M, 1G or a number of bytes, got {value!r}")


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (list,):
        return "a list"
    if origin in (dict,):
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        tp, str(tp)
    )


def _convert(tp: Any, value: Any, path: str, unknown: list[str]) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _convert(args[0], value, path, unknown)
    if tp is Any:
        return value
    if tp is Duration:
        return _parse_duration(value, path)
    if tp is ByteSize:
        return _parse_size(value, path)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{path}: expected {_describe(tp)}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_convert(item, v, f"{path}[{i}]", unknown) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return load_dataclass(tp, value, path, unknown)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    raise AssertionError(f"unsupported config type {tp!r} at {path}")


def load_dataclass(cls: Any, data: dict[str, Any], path: str, unknown: list[str]) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs = {}
    known = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    for key, value in data.items():
        key_path = f"{path}.{key}" if path else str(key)
        if key not in known:
            unknown.append(key_path)
            continue
        kwargs[key] = _convert(hints[key], value, key_path, unknown)
    return cls(**kwargs)


def parse_config(data: Any, config_dir: str = ".") -> tuple[Config, list[str]]:
    """Validate a parsed YAML document; returns the config and the unknown keys."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("the configuration file must be a YAML mapping of option: value")
    unknown: list[str] = []
    config = load_dataclass(Config, data, "", unknown)
    config.config_dir = config_dir
    _validate(config)
    return config, unknown


def _validate(config: Config) -> None:
    if not config.server_name:
        raise ConfigError("server_name: required; it is the part after ':' in user IDs")
    if not _SERVER_NAME.match(config.server_name):
        raise ConfigError(f"server_name: {config.server_name!r} is not a valid Matrix server name")
    if config.public_baseurl and not re.match(r"^https?://[^/]+", config.public_baseurl):
        raise ConfigError(
            f"public_baseurl: expected an http(s) URL such as https://matrix.example.com/,"
            f" got {config.public_baseurl!r}"
        )
    if not config.listeners:
        raise ConfigError("listeners: at least one listener is required")
    for i, listener in enumerate(config.listeners):
        if not 0 <= listener.port <= 65535:
            raise ConfigError(f"listeners[{i}].port: {listener.port} is not a TCP port")
        if listener.tls:
            raise ConfigError(
                f"listeners[{i}].tls: TLS is not terminated by the server itself;"
                " put a reverse proxy (nginx, Caddy, HAProxy) in front"
            )
    db = config.database
    if db.name == "sqlite3" and not isinstance(db.args.get("database"), str):
        raise ConfigError("database.args.database: the SQLite file path is required (a string)")
    for key in ("cp_min", "cp_max"):
        if key in db.args and (not isinstance(db.args[key], int) or db.args[key] < 1):
            raise ConfigError(f"database.args.{key}: expected a positive integer")
    if db.args.get("cp_min", 2) > db.args.get("cp_max", 10):
        raise ConfigError("database.args.cp_max: must be at least cp_min")
    if config.bcrypt_rounds < 4 or config.bcrypt_rounds > 31:
        raise ConfigError("bcrypt_rounds: expected 4..31 (12 or more in production)")
    for name, rl in [
        ("rc_registration", config.rc_registration),
        ("rc_registration_token_validity", config.rc_registration_token_validity),
        ("rc_key_requests", config.rc_key_requests),
        ("rc_login.address", config.rc_login.address),
        ("rc_login.account", config.rc_login.account),
        ("rc_login.failed_attempts", config.rc_login.failed_attempts),
    ]:
        for key, value in (("per_second", rl.per_second), ("burst_count", rl.burst_count)):
            if value <= 0:
                raise ConfigError(f"{name}.{key}: must be positive, got {value}")
    if config.refreshable_access_token_lifetime <= 0:
        raise ConfigError("refreshable_access_token_lifetime: must be positive")
    if config.max_request_body_size < 65536:
        raise ConfigError("max_request_body_size: must be at least 64K (one Matrix event)")
    if config.max_upload_size < 1:
        raise ConfigError("max_upload_size: must be at least 1 byte")
    if config.max_image_pixels < 1:
        raise ConfigError("max_image_pixels: must be positive")
    for i, size in enumerate(config.thumbnail_sizes):
        if not (1 <= size.width <= 10000 and 1 <= size.height <= 10000):
            raise ConfigError(f"thumbnail_sizes[{i}]: width and height must be 1..10000")
    if config.unused_expiration_time <= 0:
        raise ConfigError("unused_expiration_time: must be positive")
    if config.max_pending_media_uploads < 1:
        raise ConfigError("max_pending_media_uploads: must be at least 1")
    _validate_url_preview(config)
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", config.search.language):
        raise ConfigError(
            f"search.language: expected a text search configuration name such as english,"
            f" got {config.search.language!r}"
        )


_URL_PARTS = frozenset(
    {"scheme", "netloc", "path", "params", "query", "fragment", "username", "password",
     "hostname", "port"}
)


def _validate_url_preview(config: Config) -> None:
    for key in (
        "url_preview_ip_range_blacklist", "url_preview_ip_range_whitelist",
        "ip_range_blacklist", "ip_range_whitelist",
    ):
        for i, value in enumerate(getattr(config, key)):
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError:
                raise ConfigError(
                    f"{key}[{i}]: expected an IP address range such as 10.0.0.0/8, got {value!r}"
                ) from None
    for key in ("url_preview_url_blacklist", "url_preview_url_allowlist"):
        for i, entry in enumerate(getattr(config, key)):
            if not isinstance(entry, dict) or not entry:
                raise ConfigError(f"{key}[{i}]: expected a mapping of URL part to pattern")
            for part, pattern in entry.items():
                if part not in _URL_PARTS:
                    raise ConfigError(
                        f"{key}[{i}].{part}: not a URL part (one of {', '.join(sorted(_URL_PARTS))})"
                    )
                if not isinstance(pattern, str):
                    raise ConfigError(f"{key}[{i}].{part}: expected a glob or ^regex string")
                if pattern.startswith("^"):
                    try:
                        re.compile(pattern)
                    except re.error as e:
                        raise ConfigError(f"{key}[{i}].{part}: invalid regex: {e}") from None


def read_yaml(path: str | Path, what: str = "config file") -> Any:
    """The YAML document in `path`; ConfigError if it cannot be read or parsed."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path}: {e.strerror}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from None


def load_config(path: str | Path) -> Config:
    path = Path(path)
    data = read_yaml(path)
    config, unknown = parse_config(data, str(path.resolve().parent))
    for key in unknown:
        logger.warning("config: ignoring unknown option %r", key)
    return config


# --------------------------------------------------------- generating a config


def generate_config(
    server_name: str,
    database_url: str | None = None,
    port: int = 8008,
    public_baseurl: str | None = None,
) -> str:
    """The YAML of a new config, with a fresh shared secret.

    Its paths are relative, so they resolve beside the file it is written to.
    """
    if database_url:
        database = {"name": "psycopg", "args": _database_args_from_url(database_url)}
    else:
        database = {"name": "sqlite3", "args": {"database": "homeserver.db"}}
    doc = {
        "server_name": server_name,
        "public_baseurl": public_baseurl or f"http://localhost:{port}/",
        "listeners": [
            {
                "port": port,
                "bind_addresses": ["127.0.0.1"],
                "type": "http",
                "x_forwarded": False,
                "resources": [{"names": ["client", "federation", "metrics"]}],
            }
        ],
        "database": database,
        "signing_key_path": f"{server_name.replace(':', '_')}.signing.key",
        "media_store_path": "media_store",
        "enable_registration": False,
        "registration_shared_secret": secrets.token_urlsafe(32),
        "log_level": "INFO",
    }
    header = (
        f"# Homeserver configuration for {server_name}.\n"
        "# Every option, with its default, is described in config.sample.yaml.\n"
        "# Relative paths are relative to the directory of this file.\n\n"
    )
    return header + yaml.safe_dump(doc, sort_keys=False)


def _database_args_from_url(url: str) -> dict[str, Any]:
    """postgresql://user:pass@host:port/dbname?sslmode=... -> libpq keyword args."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        parsed = conninfo_to_dict(url)
    except Exception as e:  # psycopg raises ProgrammingError for malformed strings
        raise ConfigError(f"--database-url: not a PostgreSQL connection URL: {e}") from None
    return {k: v for k, v in parsed.items() if v is not None}
