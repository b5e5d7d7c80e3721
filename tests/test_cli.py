"""The command line, run as an operator runs it: `python -m homeserver ...` in a directory."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from homeserver.config import load_config
from storage.migrations import latest_version

ROOT = Path(__file__).resolve().parent.parent


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def cli(cwd: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "homeserver", *args],
        cwd=cwd,
        env=_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _assert_clean_failure(result: subprocess.CompletedProcess[str], *expected: str) -> None:
    """Exit status 1 and one clear line on stderr, never a traceback."""
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("homeserver: "), result.stderr
    for text in expected:
        assert text in result.stderr, result.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http(url: str, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            raw = resp.read()
            status = resp.status
    except urllib.error.HTTPError as e:
        raw, status = e.read(), e.code
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode()


# ----------------------------------------------------------- generate-config


def test_generate_config_writes_a_loadable_private_file(tmp_path: Path) -> None:
    out = tmp_path / "conf" / "homeserver.yaml"
    result = cli(tmp_path, "generate-config", "--server-name", "example.com", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert str(out) in result.stdout
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    config = load_config(out)
    assert config.server_name == "example.com"
    assert config.database.name == "sqlite3"
    assert config.registration_shared_secret

    # A second run never overwrites it: the shared secret and key paths stay.
    before = out.read_text()
    again = cli(tmp_path, "generate-config", "--server-name", "other.example", "-o", str(out))
    _assert_clean_failure(again, "already exists", str(out))
    assert out.read_text() == before


def test_generate_config_with_postgres(tmp_path: Path) -> None:
    out = tmp_path / "hs.yaml"
    result = cli(
        tmp_path, "generate-config", "--server-name", "example.com", "-o", str(out),
        "--database-url", "postgresql://hs:pw@db.internal/matrix", "--port", "8448",
        "--public-baseurl", "https://matrix.example.com/",
    )
    assert result.returncode == 0, result.stderr
    config = load_config(out)
    assert config.database.name == "psycopg"
    assert config.database.args == {"user": "hs", "password": "pw", "host": "db.internal", "dbname": "matrix"}
    assert config.listeners[0].port == 8448
    assert config.public_baseurl == "https://matrix.example.com/"


def test_generate_config_rejects_a_bad_server_name(tmp_path: Path) -> None:
    out = tmp_path / "hs.yaml"
    result = cli(tmp_path, "generate-config", "--server-name", "bad name!", "-o", str(out))
    _assert_clean_failure(result, "server_name", "'bad name!'", "not a valid Matrix server name")
    assert not out.exists()


def test_generate_config_rejects_a_bad_database_url(tmp_path: Path) -> None:
    out = tmp_path / "hs.yaml"
    result = cli(tmp_path, "generate-config", "--server-name", "example.com", "-o", str(out),
                 "--database-url", "nonsense")
    _assert_clean_failure(result, "--database-url")
    assert not out.exists()


# ------------------------------------------------------------------- migrate


def test_migrate_sqlite(tmp_path: Path) -> None:
    out = tmp_path / "hs.yaml"
    assert cli(tmp_path, "generate-config", "--server-name", "example.com", "-o", str(out)).returncode == 0
    first = cli(tmp_path, "migrate", "-c", str(out))
    assert first.returncode == 0, first.stderr
    assert "applied 0001_accounts" in first.stdout
    # The database is beside the config, not in the working directory.
    assert (tmp_path / "homeserver.db").exists()
    second = cli(tmp_path, "migrate", "-c", str(out))
    assert second.returncode == 0, second.stderr
    assert "applied" not in second.stdout
    assert "up to date" in second.stdout

    # A database upgraded by a newer release is refused, with the reason.
    with sqlite3.connect(tmp_path / "homeserver.db") as conn:
        conn.execute("INSERT INTO schema_migrations VALUES (?, 'future', 0)", (latest_version() + 1,))
    _assert_clean_failure(cli(tmp_path, "migrate", "-c", str(out)), "SchemaError", "newer release")


def test_migrate_without_a_config(tmp_path: Path) -> None:
    result = cli(tmp_path, "migrate", "-c", str(tmp_path / "missing.yaml"))
    _assert_clean_failure(result, "no config file", "missing.yaml", "generate-config")
    result = cli(tmp_path, "migrate")
    _assert_clean_failure(result, "no config file", "homeserver.yaml")


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"listeners": [{"port": "http"}]}, "listeners[0].port: expected an integer"),
        ({"database": {"name": "mysql"}}, "database.name: expected one of"),
        ({"rc_login": {"address": {"per_second": 0}}}, "rc_login.address.per_second"),
    ],
)
def test_invalid_config_value_names_the_key(tmp_path: Path, raw: dict, message: str) -> None:
    path = tmp_path / "hs.yaml"
    path.write_text(yaml.safe_dump({"server_name": "example.com", **raw}))
    _assert_clean_failure(cli(tmp_path, "migrate", "-c", str(path)), message)


def test_run_with_an_invalid_config(tmp_path: Path) -> None:
    path = tmp_path / "hs.yaml"
    path.write_text("server_name: example.com\nbcrypt_rounds: 2\n")
    _assert_clean_failure(cli(tmp_path, "run", "-c", str(path)), "bcrypt_rounds")


def test_invalid_yaml(tmp_path: Path) -> None:
    path = tmp_path / "hs.yaml"
    path.write_text("server_name: [example.com\n")
    _assert_clean_failure(cli(tmp_path, "migrate", "-c", str(path)), "not valid YAML")


# ---------------------------------------------------------------------- run


def test_first_run_with_a_bad_server_name_writes_nothing(tmp_path: Path) -> None:
    result = cli(tmp_path, "run", "--data-dir", "data", "--server-name", "bad name!", "--port", "1")
    _assert_clean_failure(result, "server_name")
    assert not (tmp_path / "data" / "homeserver.yaml").exists()


class RunningServer:
    def __init__(self, cwd: Path, port: int) -> None:
        self.cwd = cwd
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.stdout_path = cwd / "server.out"
        self.stderr_path = cwd / "server.err"
        with self.stdout_path.open("w") as out, self.stderr_path.open("w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "homeserver", "run", "--data-dir", "data", "--port", str(port)],
                cwd=cwd, env=_env(), stdin=subprocess.DEVNULL, stdout=out, stderr=err,
            )

    def output(self) -> str:
        return self.stdout_path.read_text() + self.stderr_path.read_text()

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                time.sleep(0.05)
        pytest.fail(f"server not ready after {timeout}s:\n{self.output()}")


@pytest.fixture
def first_run(tmp_path: Path) -> Iterator[RunningServer]:
    server = RunningServer(tmp_path, _free_port())
    try:
        server.wait_ready()
        yield server
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()


def test_first_run(first_run: RunningServer) -> None:
    data = first_run.cwd / "data"
    config_path = data / "homeserver.yaml"

    # It wrote a config (private), a signing key and an SQLite database.
    assert stat.S_IMODE(config_path.stat().st_mode) == 0o600
    config = load_config(config_path)
    assert config.server_name == "localhost"
    assert config.listeners[0].port == first_run.port
    assert (data / "localhost.signing.key").exists()
    assert (data / "homeserver.db").exists()

    # It told the operator how to make the admin user and where to point Element.
    stdout = first_run.stdout_path.read_text()
    assert "register-user -c data/homeserver.yaml --admin" in stdout
    assert f"http://localhost:{first_run.port}" in stdout
    assert "Element" in stdout

    status, body = _http(first_run.url + "/_matrix/client/versions")
    assert status == 200 and "v1.1" in body["versions"]
    status, body = _http(first_run.url + "/health")
    assert status == 200 and body == "OK"

    # The printed command creates the admin user against the running server.
    cwd = first_run.cwd
    made = cli(cwd, "register-user", "-c", str(config_path), "-u", "admin", "-p", "secretpw", "--admin")
    assert made.returncode == 0, made.stderr
    assert "@admin:localhost" in made.stdout and "admin" in made.stdout
    status, body = _http(
        first_run.url + "/_matrix/client/v3/login",
        {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "admin"}, "password": "secretpw"},
    )
    assert status == 200, body
    assert body["user_id"] == "@admin:localhost" and body["access_token"]

    # Registering the same name again reports the server's error.
    taken = cli(cwd, "register-user", "-c", str(config_path), "-u", "admin", "-p", "x", "--no-admin")
    _assert_clean_failure(taken, "M_USER_IN_USE")

    wrong = cli(
        cwd, "register-user", "-c", str(config_path), "-u", "mallory", "-p", "pw", "--admin",
        "--shared-secret", "not-the-secret",
    )
    _assert_clean_failure(wrong, "M_FORBIDDEN", "HMAC incorrect")

    # Without a terminal, missing values are an error, not a hanging prompt.
    no_password = cli(cwd, "register-user", "-c", str(config_path), "-u", "bob", "--admin")
    _assert_clean_failure(no_password, "password")

    # SIGTERM stops it cleanly.
    first_run.proc.send_signal(signal.SIGTERM)
    assert first_run.proc.wait(timeout=15) == 0, first_run.output()
    assert "Traceback" not in first_run.output()

    # And it starts again from what it wrote, keeping its key.
    key = (data / "localhost.signing.key").read_text()
    again = RunningServer(first_run.cwd, first_run.port)
    try:
        again.wait_ready()
        assert "First run" not in again.stdout_path.read_text()
        assert (data / "localhost.signing.key").read_text() == key
        again.proc.send_signal(signal.SIGINT)
        assert again.proc.wait(timeout=15) == 0, again.output()
    finally:
        if again.proc.poll() is None:
            again.proc.kill()
            again.proc.wait()


def test_register_user_with_no_server(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    result = cli(tmp_path, "register-user", "--url", url, "--shared-secret", "s", "-u", "a", "-p", "b", "--admin")
    _assert_clean_failure(result, "cannot reach the homeserver", url)


# --------------------------------------------------------------------- users


def _users_db(tmp_path: Path) -> Path:
    """A config and a migrated SQLite database holding @admin (an admin) and
    @alice, signed in on one device; returns the config's path."""
    import asyncio

    from homeserver.accounts.service import Accounts
    from homeserver.accounts.uia import UserInteractiveAuth
    from homeserver.app import database_for
    from storage import Storage

    out = tmp_path / "hs.yaml"
    assert cli(tmp_path, "generate-config", "--server-name", "example.com", "-o", str(out)).returncode == 0
    assert cli(tmp_path, "migrate", "-c", str(out)).returncode == 0
    config = load_config(out)

    async def _make() -> None:
        db = database_for(config)
        await db.open()
        try:
            storage = Storage(db)
            accounts = Accounts(config, storage, UserInteractiveAuth(storage))
            await accounts.register("admin", await accounts.hasher.hash("pw"), admin=True, inhibit_login=True)
            await accounts.register("alice", await accounts.hasher.hash("old password"))
        finally:
            await db.close()

    asyncio.run(_make())
    return out


def _db_rows(tmp_path: Path, sql: str, *params: Any) -> list[tuple]:
    with sqlite3.connect(tmp_path / "homeserver.db") as conn:
        return conn.execute(sql, params).fetchall()


def test_users_commands(tmp_path: Path) -> None:
    config = str(_users_db(tmp_path))
    listed = cli(tmp_path, "users", "list", "-c", config)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["@admin:example.com", "admin"]
    assert lines[1].split() == ["@alice:example.com"]
    assert lines[-1] == "2 users"

    made = cli(tmp_path, "users", "set-admin", "-c", config, "@alice:example.com", "true")
    assert made.returncode == 0, made.stderr
    assert "@alice:example.com is now an admin" in made.stdout
    assert _db_rows(tmp_path, "SELECT admin FROM users WHERE user_id = ?", "@alice:example.com") == [(1,)]
    # The operator may demote anyone, the last admin included.
    unmade = cli(tmp_path, "users", "set-admin", "-c", config, "@admin:example.com", "false")
    assert unmade.returncode == 0, unmade.stderr
    assert _db_rows(tmp_path, "SELECT admin FROM users WHERE user_id = ?", "@admin:example.com") == [(0,)]

    # Resetting the password signs alice out unless --keep-devices.
    kept = cli(tmp_path, "users", "reset-password", "-c", config, "@alice:example.com",
               "-p", "interim", "--keep-devices")
    assert kept.returncode == 0, kept.stderr
    assert _db_rows(tmp_path, "SELECT COUNT(*) FROM access_tokens") == [(1,)]
    reset = cli(tmp_path, "users", "reset-password", "-c", config, "@alice:example.com", "-p", "new password")
    assert reset.returncode == 0, reset.stderr
    assert "signed out" in reset.stdout
    assert _db_rows(tmp_path, "SELECT COUNT(*) FROM access_tokens") == [(0,)]
    (stored,) = _db_rows(tmp_path, "SELECT password_hash FROM users WHERE user_id = ?", "@alice:example.com")
    import bcrypt

    assert bcrypt.checkpw(b"new password", stored[0].encode())
    assert stored[0].startswith(f"$2b${load_config(Path(config)).bcrypt_rounds:02d}$")

    gone = cli(tmp_path, "users", "deactivate", "-c", config, "@alice:example.com")
    assert gone.returncode == 0, gone.stderr
    assert "deactivated @alice:example.com" in gone.stdout
    assert _db_rows(tmp_path, "SELECT deactivated, password_hash FROM users WHERE user_id = ?",
                    "@alice:example.com") == [(1, None)]
    listed = cli(tmp_path, "users", "list", "-c", config)
    assert "@alice" not in listed.stdout and listed.stdout.splitlines()[-1] == "1 user"
    listed = cli(tmp_path, "users", "list", "-c", config, "--deactivated", "--name", "ali")
    assert listed.stdout.splitlines() == ["@alice:example.com  admin deactivated", "1 user"]


def test_users_command_errors(tmp_path: Path) -> None:
    config = str(_users_db(tmp_path))
    _assert_clean_failure(
        cli(tmp_path, "users", "deactivate", "-c", config, "@nobody:example.com"), "M_NOT_FOUND", "User not found"
    )
    _assert_clean_failure(
        cli(tmp_path, "users", "set-admin", "-c", config, "@alice:elsewhere.org", "true"), "local users"
    )
    _assert_clean_failure(cli(tmp_path, "users", "deactivate", "-c", config, "alice"), "Invalid user ID")
    # Without a terminal, no prompt hangs: the password must be given.
    _assert_clean_failure(
        cli(tmp_path, "users", "reset-password", "-c", config, "@alice:example.com"), "password"
    )
    _assert_clean_failure(
        cli(tmp_path, "users", "reset-password", "-c", config, "@alice:example.com", "-p", "x" * 600),
        "M_BAD_JSON", "longer than 512",
    )
    bad_flag = cli(tmp_path, "users", "set-admin", "-c", config, "@alice:example.com", "maybe")
    assert bad_flag.returncode == 2 and "invalid choice" in bad_flag.stderr
    _assert_clean_failure(cli(tmp_path, "users", "list", "-c", str(tmp_path / "missing.yaml")), "no config file")
    assert _db_rows(tmp_path, "SELECT user_id, deactivated, admin FROM users ORDER BY user_id") == [
        ("@admin:example.com", 0, 1), ("@alice:example.com", 0, 0),
    ]


def test_users_commands_need_a_migrated_database(tmp_path: Path) -> None:
    out = tmp_path / "hs.yaml"
    assert cli(tmp_path, "generate-config", "--server-name", "example.com", "-o", str(out)).returncode == 0
    _assert_clean_failure(cli(tmp_path, "users", "list", "-c", str(out)), "homeserver migrate")


def test_users_commands_on_either_engine(tmp_path: Path, database_config: dict) -> None:
    """The commands open the database the config names, PostgreSQL as well as SQLite."""
    out = tmp_path / "hs.yaml"
    out.write_text(yaml.safe_dump({
        "server_name": "example.com",
        "database": database_config,
        "signing_key_path": str(tmp_path / "signing.key"),
        "bcrypt_rounds": 4,
    }))
    assert cli(tmp_path, "migrate", "-c", str(out)).returncode == 0
    listed = cli(tmp_path, "users", "list", "-c", str(out))
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout == "0 users\n"
    _assert_clean_failure(
        cli(tmp_path, "users", "set-admin", "-c", str(out), "@nobody:example.com", "true"), "M_NOT_FOUND"
    )
