"""The config loader: the sample file, validation errors, units, paths, generation."""

from __future__ import annotations

import dataclasses
import logging
import re
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml

from homeserver.app import database_for
from homeserver.config import (
    Config,
    ConfigError,
    _database_args_from_url,
    generate_config,
    load_config,
    parse_config,
)

SAMPLE = Path(__file__).resolve().parent.parent / "config.sample.yaml"


def _parse(**raw: Any) -> Config:
    raw.setdefault("server_name", "example.com")
    config, unknown = parse_config(raw)
    assert not unknown, unknown
    return config


def _error(**raw: Any) -> str:
    raw.setdefault("server_name", "example.com")
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    return str(info.value)


# ------------------------------------------------------------- the sample


def _uncomment(text: str) -> str:
    """The sample with every commented-out option block switched on.

    An option block starts at a line of '#' directly followed by a name
    (`#listeners:`) and runs, '#' stripped from each line, up to the next
    line that is not a comment. Description lines (`# ...`) are left alone.
    """
    out, in_block = [], False
    for line in text.splitlines():
        if re.match(r"#[A-Za-z_]", line):
            in_block = True
        elif not line.startswith("#"):
            in_block = False
        out.append(line[1:] if in_block else line)
    return "\n".join(out) + "\n"


def _option_fields(cls: Any) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if not f.metadata.get("internal")]


def _dataclass_in(tp: Any) -> Any:
    """The dataclass a field holds directly or as list items, if any."""
    if typing.get_origin(tp) is list:
        (tp,) = typing.get_args(tp)
    return tp if dataclasses.is_dataclass(tp) else None


def test_sample_config_loads_as_is_with_the_defaults(tmp_path: Path) -> None:
    data = yaml.safe_load(SAMPLE.read_text())
    assert data == {"server_name": "example.com"}, "only server_name is set in the sample"
    config, unknown = parse_config(data, str(tmp_path))
    assert unknown == []
    assert config == Config(server_name="example.com", config_dir=str(tmp_path))
    # And through the file loader, as the server reads it.
    assert load_config(SAMPLE).server_name == "example.com"


def test_sample_config_documents_every_option() -> None:
    """Every Config field, at every depth, is in the sample; shown at its default."""
    doc = yaml.safe_load(_uncomment(SAMPLE.read_text()))
    config, unknown = parse_config(doc)
    assert unknown == []
    defaults = Config(server_name="example.com")
    missing: list[str] = []
    wrong_default: list[str] = []

    def walk(cls: Any, section: dict, value: Any, default: Any, path: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in _option_fields(cls):
            key_path = f"{path}.{f.name}" if path else f.name
            if f.name not in section:
                missing.append(key_path)
                continue
            got, want = getattr(value, f.name), getattr(default, f.name)
            inner = _dataclass_in(hints[f.name])
            if inner is not None:
                items = section[f.name] if isinstance(section[f.name], list) else [section[f.name]]
                got_items = got if isinstance(got, list) else [got]
                want_items = want if isinstance(want, list) else [want]
                for i, (item, g, w) in enumerate(zip(items, got_items, want_items)):
                    walk(inner, item, g, w, f"{key_path}[{i}]" if isinstance(got, list) else key_path)
            elif isinstance(want, dict):
                if not want.items() <= got.items():
                    wrong_default.append(key_path)
            elif want is not None and got != want:
                wrong_default.append(f"{key_path}: sample {got!r}, default {want!r}")

    walk(Config, doc, config, defaults, "")
    assert missing == [], f"options missing from config.sample.yaml: {missing}"
    assert wrong_default == [], f"sample values that are not the defaults: {wrong_default}"


def test_sample_config_describes_database_args() -> None:
    text = SAMPLE.read_text()
    for name in ("sqlite3", "psycopg", "synchronous", "cp_min", "cp_max", "dsn", "sslmode"):
        assert name in text, name
    # The PostgreSQL example in the sample is itself valid.
    example = re.search(r"#   database:\n((?:#     .*\n)+)", text)
    assert example is not None
    block = "database:\n" + "".join(line[4:] + "\n" for line in example.group(1).splitlines())
    config = _parse(**yaml.safe_load(block))
    assert config.database.name == "psycopg"
    assert config.database.args["cp_max"] == 10


# ------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"listeners": [{"port": "eighty"}]}, "listeners[0].port: expected an integer"),
        ({"listeners": [{"port": 70000}]}, "listeners[0].port: 70000 is not a TCP port"),
        ({"listeners": [{"port": 8008}, {"port": True}]}, "listeners[1].port: expected an integer"),
        ({"listeners": [{"tls": True}]}, "listeners[0].tls:"),
        ({"listeners": []}, "listeners: at least one listener"),
        ({"listeners": {"port": 8008}}, "listeners: expected a list"),
        (
            {"listeners": [{"resources": [{"names": ["client", "websocket"]}]}]},
            "listeners[0].resources[0].names[1]: expected one of 'client', 'federation', 'keys'",
        ),
        ({"database": {"name": "postgres"}}, "database.name: expected one of 'sqlite3', 'psycopg'"),
        ({"database": {"name": "sqlite3", "args": {"database": 5}}}, "database.args.database:"),
        ({"database": {"name": "psycopg", "args": {"cp_min": 0}}}, "database.args.cp_min:"),
        ({"database": {"name": "psycopg", "args": {"cp_max": "ten"}}}, "database.args.cp_max:"),
        (
            {"database": {"name": "psycopg", "args": {"cp_min": 5, "cp_max": 2}}},
            "database.args.cp_max: must be at least cp_min",
        ),
        ({"database": "sqlite3"}, "database: expected a mapping"),
        ({"server_name": ""}, "server_name: required"),
        ({"server_name": "bad name!"}, "server_name: 'bad name!' is not a valid Matrix server name"),
        ({"server_name": 42}, "server_name: expected a string"),
        ({"public_baseurl": "matrix.example.com"}, "public_baseurl: expected an http(s) URL"),
        ({"refreshable_access_token_lifetime": "5x"}, "refreshable_access_token_lifetime: expected a duration"),
        ({"session_lifetime": "1.5h"}, "session_lifetime: expected a duration"),
        ({"refresh_token_lifetime": True}, "refresh_token_lifetime: expected a duration"),
        ({"refreshable_access_token_lifetime": 0}, "refreshable_access_token_lifetime: must be positive"),
        ({"max_upload_size": "10Q"}, "max_upload_size: expected a size"),
        ({"max_request_body_size": "1K"}, "max_request_body_size: must be at least 64K"),
        ({"rc_login": {"address": {"per_second": 0}}}, "rc_login.address.per_second: must be positive"),
        ({"rc_login": {"failed_attempts": {"burst_count": -1}}}, "rc_login.failed_attempts.burst_count:"),
        ({"rc_registration": {"per_second": "fast"}}, "rc_registration.per_second: expected a number"),
        ({"bcrypt_rounds": 3}, "bcrypt_rounds: expected 4..31"),
        ({"bcrypt_rounds": 12.5}, "bcrypt_rounds: expected an integer"),
        ({"enable_registration": "yes"}, "enable_registration: expected true or false"),
        ({"password_config": {"enabled": 1}}, "password_config.enabled: expected true or false"),
        ({"password_config": True}, "password_config: expected a mapping"),
        ({"log_level": "LOUD"}, "log_level: expected one of 'DEBUG'"),
    ],
)
def test_validation_errors_name_the_key(raw: dict, message: str) -> None:
    assert message in _error(**raw)


def test_server_name_missing() -> None:
    with pytest.raises(ConfigError, match=r"^server_name: required"):
        parse_config({"enable_registration": True})


@pytest.mark.parametrize(
    "name", ["example.com", "localhost", "example.com:8448", "1.2.3.4", "[::1]:8448", "matrix-1.example.org"]
)
def test_valid_server_names(name: str) -> None:
    assert _parse(server_name=name).server_name == name


def test_document_must_be_a_mapping() -> None:
    with pytest.raises(ConfigError, match="YAML mapping"):
        parse_config(["server_name", "example.com"])


def test_unknown_keys_are_warnings_not_errors(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    raw = {
        "server_name": "example.com",
        "report_stats": False,
        "listeners": [{"port": 8008, "bogus": 1}],
        "rc_login": {"address": {"per_second": 1, "extra": 2}},
    }
    config, unknown = parse_config(raw)
    assert config.listeners[0].port == 8008
    assert config.rc_login.address.per_second == 1.0
    assert unknown == ["report_stats", "listeners[0].bogus", "rc_login.address.extra"]

    path = tmp_path / "homeserver.yaml"
    path.write_text(yaml.safe_dump(raw))
    with caplog.at_level(logging.WARNING, logger="homeserver.config"):
        load_config(path)
    assert "report_stats" in caplog.text and "listeners[0].bogus" in caplog.text


def test_internal_fields_are_not_options() -> None:
    config, unknown = parse_config({"server_name": "example.com", "config_dir": "/etc"})
    assert unknown == ["config_dir"]
    assert config.config_dir == "."


# ---------------------------------------------------------- units and types


@pytest.mark.parametrize(
    "value, ms",
    [
        ("5m", 300_000), ("30s", 30_000), ("250ms", 250), ("1h", 3_600_000), ("2d", 172_800_000),
        ("1w", 604_800_000), ("1y", 31_536_000_000), (" 10 s ", 10_000), ("1500", 1500), (1500, 1500),
    ],
)
def test_durations(value: Any, ms: int) -> None:
    assert _parse(session_lifetime=value).session_lifetime == ms


@pytest.mark.parametrize(
    "value, size",
    [
        ("50M", 50 * 1024**2), ("50m", 50 * 1024**2), ("512K", 512 * 1024), ("1G", 1024**3),
        ("2T", 2 * 1024**4), ("10MB", 10 * 1024**2), ("4096", 4096), (4096, 4096),
    ],
)
def test_sizes(value: Any, size: int) -> None:
    assert _parse(max_upload_size=value).max_upload_size == size


def test_defaults() -> None:
    config = _parse()
    assert config.refreshable_access_token_lifetime == 300_000
    assert config.refresh_token_lifetime is None
    assert config.max_upload_size == 50 * 1024**2
    assert config.bcrypt_rounds == 12
    assert config.listeners[0].port == 8008
    assert config.listeners[0].bind_addresses == ["127.0.0.1"]
    assert config.listeners[0].resources[0].names == ["client", "federation"]
    assert config.database.name == "sqlite3"
    assert config.database.args == {"database": "homeserver.db"}
    assert (config.rc_login.address.per_second, config.rc_login.address.burst_count) == (0.003, 5)
    assert config.base_url == "http://localhost:8008/"


def test_optional_values_accept_null() -> None:
    config = _parse(session_lifetime=None, public_baseurl=None, registration_shared_secret=None)
    assert config.session_lifetime is None and config.public_baseurl is None


def test_integers_are_accepted_for_numbers() -> None:
    config = _parse(rc_registration={"per_second": 2, "burst_count": 10})
    assert config.rc_registration.per_second == 2.0
    assert isinstance(config.rc_registration.per_second, float)


def test_base_url_from_public_baseurl() -> None:
    assert _parse(public_baseurl="https://matrix.example.com").base_url == "https://matrix.example.com/"


def test_sqlite_database_given_only_by_name() -> None:
    config = _parse(database={"name": "sqlite3"})
    assert config.database.args == {"database": "homeserver.db"}


def test_psycopg_args_are_kept() -> None:
    args = {"user": "synapse", "password": "pw", "database": "synapse", "host": "db", "cp_min": 1, "cp_max": 4}
    config = _parse(database={"name": "psycopg", "args": args})
    assert config.database.args == args


# -------------------------------------------------------------------- paths


def test_relative_paths_resolve_against_the_config_directory(tmp_path: Path, monkeypatch) -> None:
    conf_dir = tmp_path / "etc" / "matrix"
    conf_dir.mkdir(parents=True)
    path = conf_dir / "homeserver.yaml"
    path.write_text("server_name: example.com\nmedia_store_path: media\n")
    monkeypatch.chdir(tmp_path)
    config = load_config(Path("etc/matrix/homeserver.yaml"))
    assert Path(config.config_dir) == conf_dir
    assert config.resolve_path(config.media_store_path) == conf_dir / "media"
    assert config.resolve_path("/var/lib/media") == Path("/var/lib/media")
    assert config.resolve_path("~/keys") == Path.home() / "keys"
    # The SQLite file, by default and when given relative, lives beside the config.
    assert Path(database_for(config).path) == conf_dir / "homeserver.db"


def test_load_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("server_name: [unclosed\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config(bad)


# --------------------------------------------------------------- generation


def test_generated_config_loads(tmp_path: Path) -> None:
    text = generate_config("example.com", port=8448, public_baseurl="https://matrix.example.com/")
    path = tmp_path / "homeserver.yaml"
    path.write_text(text)
    config, unknown = parse_config(yaml.safe_load(text), str(tmp_path))
    assert unknown == []
    config = load_config(path)
    assert config.server_name == "example.com"
    assert config.listeners[0].port == 8448
    assert config.public_baseurl == "https://matrix.example.com/"
    assert config.database.name == "sqlite3"
    assert len(config.registration_shared_secret or "") >= 32
    assert config.signing_key_path == "example.com.signing.key"
    # Each config gets a secret of its own.
    assert generate_config("example.com") != generate_config("example.com")


def test_generated_config_with_a_port_in_the_server_name(tmp_path: Path) -> None:
    config, _ = parse_config(yaml.safe_load(generate_config("example.com:8448")))
    assert config.signing_key_path == "example.com_8448.signing.key"


def test_generated_config_with_database_url(tmp_path: Path) -> None:
    text = generate_config(
        "example.com", database_url="postgresql://synapse:s3cret@db.internal:5433/matrix?sslmode=require"
    )
    config, unknown = parse_config(yaml.safe_load(text))
    assert unknown == []
    assert config.database.name == "psycopg"
    assert config.database.args == {
        "user": "synapse",
        "password": "s3cret",
        "host": "db.internal",
        "port": "5433",
        "dbname": "matrix",
        "sslmode": "require",
    }


@pytest.mark.parametrize(
    "url, args",
    [
        ("postgresql://localhost/homeserver", {"host": "localhost", "dbname": "homeserver"}),
        ("postgres://u@h", {"user": "u", "host": "h"}),
        ("host=db user=me dbname=hs", {"host": "db", "user": "me", "dbname": "hs"}),
    ],
)
def test_database_url_to_args(url: str, args: dict) -> None:
    assert _database_args_from_url(url) == args


def test_bad_database_url() -> None:
    with pytest.raises(ConfigError, match="--database-url: not a PostgreSQL connection URL"):
        _database_args_from_url("not a url")


def test_listener_resource_names() -> None:
    config, _ = parse_config(
        {
            "server_name": "example.com",
            "listeners": [
                {"port": 8008, "resources": [{"names": ["client"]}, {"names": ["keys", "health"]}]},
                {"port": 9000, "type": "metrics", "resources": [{"names": ["client"]}]},
            ],
        }
    )
    assert config.listeners[0].resource_names() == {"client", "keys", "health"}
    # A Synapse-style metrics listener serves /metrics whatever its resources say.
    assert config.listeners[1].resource_names() == {"metrics"}
