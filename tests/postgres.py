"""Finding a PostgreSQL server for the tests.

In order: the DSN in $HOMESERVER_TEST_POSTGRES; a server answering on
127.0.0.1:5432 (user postgres); otherwise a temporary cluster started with
initdb/pg_ctl (as an unprivileged user when running as root) and removed at
exit. Each test then gets a schema of its own inside database
`homeserver_test`, so tests never see each other's rows.
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

TEST_DATABASE = "homeserver_test"


def _answers(dsn: str) -> bool:
    try:
        with psycopg.connect(dsn, connect_timeout=3, autocommit=True) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _find_binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    return candidates[0] if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_temporary_cluster() -> str | None:
    initdb, pg_ctl = _find_binary("initdb"), _find_binary("pg_ctl")
    if not initdb or not pg_ctl:
        return None
    base = tempfile.mkdtemp(prefix="homeserver-pg-")
    datadir = os.path.join(base, "data")
    prefix: list[str] = []
    if os.geteuid() == 0:
        # initdb refuses to run as root.
        user = "postgres"
        try:
            pwd.getpwnam(user)
        except KeyError:
            user = "nobody"
        os.chown(base, pwd.getpwnam(user).pw_uid, pwd.getpwnam(user).pw_gid)
        prefix = ["runuser", "-u", user, "--"]
    port = _free_port()
    subprocess.run(
        [*prefix, initdb, "-D", datadir, "-A", "trust", "-U", "postgres", "-E", "UTF8"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    subprocess.run(
        [
            *prefix, pg_ctl, "-D", datadir, "-l", os.path.join(base, "log"), "-w",
            "-o", f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off",
            "start",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )

    def _stop() -> None:
        subprocess.run([*prefix, pg_ctl, "-D", datadir, "-m", "immediate", "stop"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(base, ignore_errors=True)

    atexit.register(_stop)
    return f"host=127.0.0.1 port={port} user=postgres dbname=postgres"


def server_dsn() -> str | None:
    """A DSN for an administrative connection to a PostgreSQL server, or None."""
    env = os.environ.get("HOMESERVER_TEST_POSTGRES")
    if env:
        return env
    local = "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=3"
    if _port_open("127.0.0.1", 5432) and _answers(local):
        return local
    return _start_temporary_cluster()


def ensure_test_database(dsn: str) -> str:
    """Create the test database if needed; returns a DSN pointing at it."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (TEST_DATABASE,)
        ).fetchone()
        if not exists:
            try:
                conn.execute(f"CREATE DATABASE {TEST_DATABASE}")
            except psycopg.errors.DuplicateDatabase:
                pass
    params = conninfo_to_dict(dsn)
    params["dbname"] = TEST_DATABASE
    return make_conninfo(**params)


class Schema:
    """A schema of its own for one test, dropped afterwards."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.name = "t_" + uuid.uuid4().hex[:16]
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {self.name}")

    def database_args(self) -> dict:
        """`database.args` for the homeserver config: the test DB with this schema first."""
        args = {k: v for k, v in conninfo_to_dict(self.dsn).items() if v is not None}
        args["options"] = f"-c search_path={self.name}"
        args["cp_min"] = 1
        args["cp_max"] = 5
        return args

    def drop(self) -> None:
        for _ in range(3):
            try:
                with psycopg.connect(self.dsn, autocommit=True) as conn:
                    conn.execute(f"DROP SCHEMA IF EXISTS {self.name} CASCADE")
                return
            except psycopg.errors.LockNotAvailable:
                time.sleep(0.2)
