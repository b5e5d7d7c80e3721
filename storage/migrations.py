"""Numbered schema migrations, run at start-up and by `homeserver migrate`.

Migrations live in `storage/schema/` as `NNNN_name.sql`, run on both
engines. Where an engine needs more (PostgreSQL sequences, SQLite FTS5
tables), `NNNN_name.sqlite.sql` or `NNNN_name.postgres.sql` runs after the
shared file, in the same migration. Applied versions are recorded in
`schema_migrations`; a database that records a version newer than any this
code knows is refused, so an old server never writes into a newer schema.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

from .engines import Database, PostgresDatabase, SQLiteDatabase, Transaction

SCHEMA_DIR = Path(__file__).parent / "schema"
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+?)(?:\.(sqlite|postgres))?\.sql$")
# Any constant works; it only has to be the same for every process.
_MIGRATION_LOCK_ID = 0x6D61_7472


class SchemaError(Exception):
    """The database schema cannot be used by this version of the server."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def available_migrations(dialect: str) -> list[Migration]:
    """Every migration for `dialect`, in order."""
    found: dict[int, tuple[str, Path | None, Path | None]] = {}
    for path in SCHEMA_DIR.iterdir():
        m = _NAME.match(path.name)
        if not m:
            continue
        version, name, engine = int(m.group(1)), m.group(2), m.group(3)
        _, shared, specific = found.get(version, (name, None, None))
        if engine is None:
            shared = path
        elif engine == dialect:
            specific = path
        found[version] = (name, shared, specific)
    migrations = []
    for version in sorted(found):
        name, shared, specific = found[version]
        sql = "\n".join(p.read_text() for p in (shared, specific) if p is not None)
        migrations.append(Migration(version, name, sql))
    return migrations


def latest_version() -> int:
    return max(m.version for m in available_migrations("sqlite"))


async def _applied_version(txn: Transaction) -> int:
    await txn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_ts BIGINT NOT NULL)"
    )
    return await txn.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_migrations") or 0


async def current_version(db: Database) -> int:
    return await db.run("schema_version", _applied_version)


async def migrate(db: Database) -> list[Migration]:
    """Bring the schema up to date; returns the migrations that were applied."""
    migrations = available_migrations(db.dialect)
    newest = migrations[-1].version if migrations else 0
    if isinstance(db, PostgresDatabase):
        return await _migrate_postgres(db, migrations, newest)
    assert isinstance(db, SQLiteDatabase)
    applied_now = []
    version = await current_version(db)
    _refuse_newer(version, newest)
    for migration in migrations:
        if migration.version <= version:
            continue
        # executescript commits on its own, so the statements and the record
        # of the migration go in one explicit transaction.
        await db.executescript(
            "BEGIN;\n"
            + migration.sql
            + f"\n;INSERT INTO schema_migrations (version, name, applied_ts) VALUES"
            f" ({migration.version}, '{migration.name}', {int(time.time() * 1000)});\nCOMMIT;"
        )
        applied_now.append(migration)
    return applied_now


async def _migrate_postgres(
    db: PostgresDatabase, migrations: list[Migration], newest: int
) -> list[Migration]:
    applied_now = []
    async with db.connection() as conn:
        async with conn.transaction():
            # Several processes may start at once; one migrates, the others
            # wait, then (at READ COMMITTED, not the pool's REPEATABLE READ,
            # whose snapshot predates the wait) see what it applied.
            await conn.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK_ID,))
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_ts BIGINT NOT NULL)"
            )
            cur = await conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
            version = (await cur.fetchone())[0]
            _refuse_newer(version, newest)
            for migration in migrations:
                if migration.version <= version:
                    continue
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, applied_ts) VALUES (%s, %s, %s)",
                    (migration.version, migration.name, int(time.time() * 1000)),
                )
                applied_now.append(migration)
    return applied_now


def _refuse_newer(version: int, newest: int) -> None:
    if version > newest:
        raise SchemaError(
            f"The database schema is at version {version}, newer than the newest this "
            f"server knows ({newest}). It was upgraded by a newer release of the server: "
            "run that release, or restore a backup taken before the upgrade."
        )
