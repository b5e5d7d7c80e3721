"""The servers under test: fresh PostgreSQL databases, configs, processes, and their CPU and memory.

Both servers get the same treatment: one process, a database of their own
made for this run, every rate limit out of the way, bcrypt at 12 rounds,
a connection pool of 5 to 10, presence off, and their generated logging
left as it is.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import yaml
from psycopg.conninfo import conninfo_to_dict

REPO = Path(__file__).resolve().parent.parent
SERVER_NAME = "bench.local"
BCRYPT_ROUNDS = 12
POOL = {"cp_min": 5, "cp_max": 10}
UNLIMITED = {"per_second": 100000, "burst_count": 100000}

# Every rate limit Synapse has, raised out of reach. This server gets the same
# block: it reads the ones it implements (Synapse's names) and ignores the rest.
RATE_LIMITS: dict[str, Any] = {
    "rc_message": UNLIMITED,
    "rc_registration": UNLIMITED,
    "rc_registration_token_validity": UNLIMITED,
    "rc_login": {"address": UNLIMITED, "account": UNLIMITED, "failed_attempts": UNLIMITED},
    "rc_admin_redaction": UNLIMITED,
    "rc_joins": {"local": UNLIMITED, "remote": UNLIMITED},
    "rc_joins_per_room": UNLIMITED,
    "rc_3pid_validation": UNLIMITED,
    "rc_invites": {"per_room": UNLIMITED, "per_user": UNLIMITED, "per_issuer": UNLIMITED},
    "rc_third_party_invite": UNLIMITED,
    "rc_media_create": UNLIMITED,
    "rc_presence": {"per_user": UNLIMITED},
    "rc_delayed_event_mgmt": UNLIMITED,
    "rc_room_creation": UNLIMITED,
    "rc_reports": UNLIMITED,
    "rc_user_directory": UNLIMITED,
    "rc_profile": UNLIMITED,
    "rc_key_requests": UNLIMITED,
}


LABELS = {"ours": "this server", "synapse": "Synapse"}


class ServerFailed(Exception):
    """A server did not start or died; the message ends with its log's tail."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------- PostgreSQL


def postgres_admin_dsn() -> str:
    """An administrative DSN: $BENCH_POSTGRES, else whatever the test suite would use."""
    env = os.environ.get("BENCH_POSTGRES")
    if env:
        return env
    sys.path.insert(0, str(REPO))
    from tests.postgres import server_dsn

    dsn = server_dsn()
    if dsn is None:
        raise SystemExit("no PostgreSQL server found (set BENCH_POSTGRES to an admin DSN)")
    return dsn


@dataclass
class Database:
    """A database made for one server in one run, dropped afterwards."""

    admin_dsn: str
    name: str

    @property
    def params(self) -> dict[str, str]:
        base = {k: str(v) for k, v in conninfo_to_dict(self.admin_dsn).items() if v is not None}
        base.pop("connect_timeout", None)
        base["dbname"] = self.name
        return base

    def url(self) -> str:
        p = self.params
        auth = p.get("user", "postgres") + (f":{p['password']}" if p.get("password") else "")
        return f"postgresql://{auth}@{p.get('host', '127.0.0.1')}:{p.get('port', '5432')}/{self.name}"

    def create(self, c_locale: bool) -> None:
        # Synapse refuses a database whose collation is not C.
        locale = " LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0 ENCODING 'UTF8'" if c_locale else ""
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}"')
            conn.execute(f'CREATE DATABASE "{self.name}"{locale}')

    def drop(self) -> None:
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')

    def backend_pids(self) -> list[int]:
        """PostgreSQL backends serving this database (for their CPU time)."""
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s", (self.name,)
            ).fetchall()
        return [r[0] for r in rows]


# ------------------------------------------------------------------ /proc


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return ticks / os.sysconf("SC_CLK_TCK")


def peak_rss_bytes(pid: int) -> int:
    """The process's peak resident set size (VmHWM)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise ValueError(f"no VmHWM for pid {pid}")


def database_cpu_seconds(db: Database) -> float | None:
    """Summed CPU time of the database's backends, or None where /proc cannot see them."""
    total = 0.0
    try:
        for pid in db.backend_pids():
            total += cpu_seconds(pid)
    except (OSError, psycopg.Error):
        return None
    return total


# ------------------------------------------------------------------ servers


@dataclass
class Server:
    """One server process under test."""

    name: str
    label: str
    workdir: Path
    database: Database
    port: int
    command: list[str]
    cwd: Path
    shared_secret: str = ""
    process: subprocess.Popen[bytes] | None = None
    startup_seconds: float = 0.0
    _log: Any = field(default=None, repr=False)
    _started: float = field(default=0.0, repr=False)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "stdout.log"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def spawn(self) -> None:
        """Start the process, its output going to `log_path`."""
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop())
        self._started = time.monotonic()
        self.process = subprocess.Popen(
            self.command, cwd=self.cwd, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    async def wait_ready(self, timeout: float = 180.0) -> None:
        """Wait until the spawned process answers /_matrix/client/versions."""
        assert self.process is not None
        started = self._started
        async with aiohttp.ClientSession() as session:
            while True:
                if self.process.poll() is not None:
                    raise ServerFailed(f"{self.label} exited with {self.process.returncode}"
                                       f"{self.log_tail()}")
                if time.monotonic() - started > timeout:
                    raise ServerFailed(f"{self.label} did not answer within {timeout:.0f}s"
                                       f"{self.log_tail()}")
                try:
                    async with session.get(self.base_url + "/_matrix/client/versions") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.2)
        self.startup_seconds = time.monotonic() - started

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return "\n--- " + str(self.log_path) + " ---\n" + "\n".join(text)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self._log is not None:
            self._log.close()


def prepare_ours(workdir: Path, database: Database) -> Server:
    """This server: `homeserver generate-config`, then the bench settings."""
    port = free_port()
    config_path = workdir / "homeserver.yaml"
    subprocess.run(
        [sys.executable, "-m", "homeserver", "generate-config", "--server-name", SERVER_NAME,
         "--database-url", database.url(), "--port", str(port), "-o", str(config_path)],
        cwd=REPO, check=True, stdout=subprocess.DEVNULL,
    )
    doc = yaml.safe_load(config_path.read_text())
    doc["enable_registration"] = True
    doc["bcrypt_rounds"] = BCRYPT_ROUNDS
    doc["presence"] = {"enabled": False}
    doc["database"]["args"].update(POOL)
    doc.update(RATE_LIMITS)
    config_path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return Server(
        name="ours", label=LABELS["ours"], workdir=workdir, database=database, port=port,
        command=[sys.executable, "-m", "homeserver", "run", "-c", str(config_path)],
        cwd=REPO, shared_secret=doc["registration_shared_secret"],
    )


def ensure_synapse(venv: Path) -> Path:
    """The venv's python with Synapse importable, installing it there if needed."""
    python = venv / "bin" / "python"
    check = [str(python), "-c", "import synapse, psycopg2"]
    if python.exists() and subprocess.run(check, check=False, capture_output=True).returncode == 0:
        return python
    print(f"installing Synapse into {venv} (one time) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "matrix-synapse[postgres]"],
                   check=True)
    return python


def prepare_synapse(workdir: Path, database: Database, python: Path) -> Server:
    """Synapse: `--generate-config`, then the same bench settings."""
    port = free_port()
    config_path = workdir / "homeserver.yaml"
    subprocess.run(
        [str(python), "-m", "synapse.app.homeserver", "--generate-config", "-H", SERVER_NAME,
         "-c", str(config_path), "--report-stats=no", "--data-directory", str(workdir)],
        cwd=workdir, check=True, stdout=subprocess.DEVNULL,
    )
    doc = yaml.safe_load(config_path.read_text())
    p = database.params
    doc["listeners"] = [{
        "port": port, "bind_addresses": ["127.0.0.1"], "type": "http", "tls": False,
        "x_forwarded": False, "resources": [{"names": ["client", "federation"], "compress": False}],
    }]
    args = {"user": p.get("user", "postgres"), "host": p.get("host", "127.0.0.1"),
            "port": int(p.get("port", 5432)), "database": database.name, **POOL}
    if p.get("password"):
        args["password"] = p["password"]
    doc["database"] = {"name": "psycopg2", "args": args}
    secret = doc.get("registration_shared_secret") or secrets.token_urlsafe(32)
    doc.update({
        "public_baseurl": f"http://localhost:{port}/",
        "registration_shared_secret": secret,
        "enable_registration": True,
        "enable_registration_without_verification": True,
        "bcrypt_rounds": BCRYPT_ROUNDS,
        "suppress_key_server_warning": True,
        "trusted_key_servers": [],
        "report_stats": False,
        "presence": {"enabled": False},
        **RATE_LIMITS,
    })
    config_path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return Server(
        name="synapse", label=LABELS["synapse"], workdir=workdir, database=database, port=port,
        command=[str(python), "-m", "synapse.app.homeserver", "-c", str(config_path)],
        cwd=workdir, shared_secret=secret,
    )
