"""The database engines and migrations, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from storage import Database, create_database, engines
from storage.engines import Transaction, is_unique_violation, placeholders
from storage.migrations import SchemaError, available_migrations, current_version, latest_version, migrate


async def _create_counter(db: Database) -> None:
    await db.execute("create", "CREATE TABLE counter (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)")
    await db.execute("insert", "INSERT INTO counter (id, n) VALUES (1, 0)")


async def _create_items(db: Database) -> None:
    await db.execute("create", "CREATE TABLE items (name TEXT PRIMARY KEY, note TEXT NOT NULL)")


def _peek(database_config: dict, sql: str) -> list[tuple]:
    """Run a query on a separate connection: it only sees committed rows."""
    args = dict(database_config["args"])
    if database_config["name"] == "sqlite3":
        with sqlite3.connect(args["database"]) as conn:
            return conn.execute(sql).fetchall()
    for key in ("cp_min", "cp_max"):
        args.pop(key, None)
    with psycopg.connect(make_conninfo(**args)) as conn:
        return conn.execute(sql).fetchall()


def _retryable_error(db: Database) -> Exception:
    """The error each engine reports for a transaction that should be retried."""
    if db.dialect == "sqlite":
        return sqlite3.OperationalError("database is locked")
    return psycopg.errors.SerializationFailure("could not serialize access due to concurrent update")


# ------------------------------------------------------------ transactions


async def test_run_commits(db: Database, database_config: dict) -> None:
    await _create_items(db)

    async def insert(txn: Transaction, name: str) -> int:
        return await txn.execute("INSERT INTO items (name, note) VALUES (?, ?)", (name, "n"))

    assert await db.run("insert", insert, "a") == 1
    assert await db.fetchall("read", "SELECT name, note FROM items") == [("a", "n")]
    assert _peek(database_config, "SELECT name FROM items") == [("a",)]


async def test_exception_rolls_back(db: Database, database_config: dict) -> None:
    await _create_items(db)

    async def insert_then_fail(txn: Transaction) -> None:
        await txn.execute("INSERT INTO items (name, note) VALUES (?, ?)", ("a", "n"))
        await txn.execute("INSERT INTO items (name, note) VALUES (?, ?)", ("b", "n"))
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        await db.run("insert", insert_then_fail)
    assert await db.fetchall("read", "SELECT name FROM items") == []
    assert _peek(database_config, "SELECT name FROM items") == []
    # The engine is usable afterwards.
    await db.execute("insert", "INSERT INTO items (name, note) VALUES (?, ?)", ("c", "n"))
    assert await db.fetchval("count", "SELECT COUNT(*) FROM items") == 1


async def test_failed_commit_rolls_back(db: Database) -> None:
    """A constraint checked at COMMIT fails the transaction and leaves the engine usable."""
    await db.execute("create", "CREATE TABLE parents (id INTEGER PRIMARY KEY)")
    await db.execute(
        "create",
        "CREATE TABLE children (id INTEGER PRIMARY KEY,"
        " parent INTEGER REFERENCES parents (id) DEFERRABLE INITIALLY DEFERRED)",
    )

    async def orphan(txn: Transaction) -> None:
        await txn.execute("INSERT INTO children (id, parent) VALUES (1, 99)")

    with pytest.raises((sqlite3.IntegrityError, psycopg.errors.ForeignKeyViolation)):
        await db.run("orphan", orphan)
    assert await db.fetchval("count", "SELECT COUNT(*) FROM children") == 0
    await db.execute("insert", "INSERT INTO parents (id) VALUES (99)")
    await db.run("child", orphan)
    assert await db.fetchval("count", "SELECT COUNT(*) FROM children") == 1


async def test_call_after_runs_only_after_commit(db: Database, database_config: dict) -> None:
    await _create_items(db)
    seen: list[Any] = []

    async def insert(txn: Transaction) -> str:
        await txn.execute("INSERT INTO items (name, note) VALUES (?, ?)", ("a", "n"))
        txn.call_after(lambda: seen.append(_peek(database_config, "SELECT name FROM items")))
        txn.call_after(lambda: seen.append("second"))
        assert seen == []
        return "done"

    assert await db.run("insert", insert) == "done"
    # The callback saw the committed row from another connection, and ran once.
    assert seen == [[("a",)], "second"]


async def test_call_after_not_run_on_rollback(db: Database) -> None:
    await _create_items(db)
    seen: list[str] = []

    async def fail(txn: Transaction) -> None:
        await txn.execute("INSERT INTO items (name, note) VALUES (?, ?)", ("a", "n"))
        txn.call_after(lambda: seen.append("after"))
        raise RuntimeError("rolled back")

    with pytest.raises(RuntimeError):
        await db.run("fail", fail)
    assert seen == []


async def test_retry_on_retryable_error(db: Database) -> None:
    await _create_items(db)
    attempts: list[int] = []
    seen: list[int] = []

    async def insert_conflicting_once(txn: Transaction) -> str:
        attempts.append(1)
        await txn.execute("INSERT INTO items (name, note) VALUES (?, ?)", ("a", str(len(attempts))))
        txn.call_after(lambda: seen.append(len(attempts)))
        if len(attempts) == 1:
            raise _retryable_error(db)
        return "ok"

    assert await db.run("retry", insert_conflicting_once) == "ok"
    assert len(attempts) == 2
    # Committed once, by the second attempt; only its callback ran.
    assert await db.fetchall("read", "SELECT name, note FROM items") == [("a", "2")]
    assert seen == [2]


async def test_no_retry_on_other_errors(db: Database) -> None:
    attempts: list[int] = []

    async def fail(txn: Transaction) -> None:
        attempts.append(1)
        raise (sqlite3.OperationalError("no such table: x") if db.dialect == "sqlite" else ValueError("x"))

    with pytest.raises(Exception):
        await db.run("fail", fail)
    assert attempts == [1]


async def test_retries_give_up(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engines, "MAX_ATTEMPTS", 3)
    attempts: list[int] = []

    async def always_conflicts(txn: Transaction) -> None:
        attempts.append(1)
        raise _retryable_error(db)

    with pytest.raises(type(_retryable_error(db))):
        await db.run("conflicts", always_conflicts)
    assert len(attempts) == 3


async def test_is_unique_violation(db: Database) -> None:
    await _create_items(db)
    await db.execute("insert", "INSERT INTO items (name, note) VALUES (?, ?)", ("a", "n"))
    with pytest.raises(Exception) as duplicate:
        await db.execute("insert", "INSERT INTO items (name, note) VALUES (?, ?)", ("a", "m"))
    assert is_unique_violation(duplicate.value)

    with pytest.raises(Exception) as not_null:
        await db.execute("insert", "INSERT INTO items (name, note) VALUES (?, ?)", ("b", None))
    assert not is_unique_violation(not_null.value)
    assert not is_unique_violation(ValueError("UNIQUE"))

    await db.execute("create", "CREATE TABLE pairs (a TEXT NOT NULL, b TEXT NOT NULL, UNIQUE (a, b))")
    await db.execute("insert", "INSERT INTO pairs VALUES (?, ?)", ("x", "y"))
    with pytest.raises(Exception) as composite:
        await db.execute("insert", "INSERT INTO pairs VALUES (?, ?)", ("x", "y"))
    assert is_unique_violation(composite.value)


async def test_placeholders_and_literal_percent(db: Database) -> None:
    await _create_items(db)

    async def fill(txn: Transaction) -> None:
        await txn.executemany(
            "INSERT INTO items (name, note) VALUES (?, ?)",
            [("100%", "all"), ("50% off", "half"), ("plain", "none")],
        )

    await db.run("fill", fill)
    assert await db.fetchval("percent", "SELECT '100%'") == "100%"
    assert await db.fetchval("percent", "SELECT '%s %d %%'") == "%s %d %%"
    rows = await db.fetchall("like", "SELECT name FROM items WHERE name LIKE '%\\%%' ESCAPE '\\' ORDER BY name")
    assert rows == [("100%",), ("50% off",)]
    rows = await db.fetchall(
        "like", "SELECT name, note FROM items WHERE name LIKE ? AND note <> ? ORDER BY name", ("%0%", "x%")
    )
    assert rows == [("100%", "all"), ("50% off", "half")]
    names = ["plain", "100%"]
    rows = await db.fetchall(
        "in", f"SELECT name FROM items WHERE name IN ({placeholders(len(names))}) ORDER BY name", names
    )
    assert rows == [("100%",), ("plain",)]
    assert await db.fetchone("none", "SELECT name FROM items WHERE name = ?", ("missing",)) is None
    assert await db.fetchval("none", "SELECT name FROM items WHERE name = ?", ("missing",)) is None


async def test_concurrent_increments(db: Database) -> None:
    """Read-modify-write transactions racing on one row lose no update."""
    await _create_counter(db)

    async def increment(txn: Transaction) -> None:
        n = await txn.fetchval("SELECT n FROM counter WHERE id = 1")
        await txn.execute("UPDATE counter SET n = ? WHERE id = 1", (n + 1,))

    async def increment_in_sql(txn: Transaction) -> None:
        await txn.execute("UPDATE counter SET n = n + 1 WHERE id = 1")

    await asyncio.gather(*[db.run("increment", increment) for _ in range(40)])
    await asyncio.gather(*[db.run("increment", increment_in_sql) for _ in range(20)])
    assert await db.fetchval("read", "SELECT n FROM counter WHERE id = 1") == 60


# -------------------------------------------------------------- migrations


async def test_migrations_are_idempotent(db: Database) -> None:
    # The fixture has migrated already: a second run applies nothing.
    assert await migrate(db) == []
    assert await migrate(db) == []
    assert await current_version(db) == latest_version()


async def test_schema_migrations_records_versions(database_config: dict) -> None:
    db = create_database(database_config["name"], database_config["args"])
    await db.open()
    try:
        applied = await migrate(db)
        expected = available_migrations(db.dialect)
        assert [m.version for m in applied] == [m.version for m in expected]
        rows = await db.fetchall("versions", "SELECT version, name, applied_ts FROM schema_migrations ORDER BY version")
        assert [(v, n) for v, n, _ in rows] == [(m.version, m.name) for m in expected]
        assert all(ts > 1_600_000_000_000 for _, _, ts in rows)
        assert await db.fetchval("users", "SELECT COUNT(*) FROM users") == 0
    finally:
        await db.close()


async def test_newer_schema_is_refused(db: Database) -> None:
    newer = latest_version() + 1
    await db.execute(
        "future",
        "INSERT INTO schema_migrations (version, name, applied_ts) VALUES (?, ?, ?)",
        (newer, "from_the_future", 0),
    )
    with pytest.raises(SchemaError) as info:
        await migrate(db)
    message = str(info.value)
    assert f"version {newer}" in message
    assert f"({latest_version()})" in message
    assert "newer release" in message


async def test_concurrent_migrations_apply_once(database_config: dict) -> None:
    """Several processes starting at once on one database: one migrates, the rest wait."""
    if database_config["name"] != "psycopg":
        pytest.skip("several processes share a database on PostgreSQL")
    dbs = [create_database(database_config["name"], database_config["args"]) for _ in range(3)]
    for db in dbs:
        await db.open()
    try:
        results = await asyncio.gather(*[migrate(db) for db in dbs])
        assert sorted(len(r) for r in results) == [0, 0, len(available_migrations("postgres"))]
        assert await current_version(dbs[0]) == latest_version()
    finally:
        for db in dbs:
            await db.close()


def test_migration_files_cover_both_engines() -> None:
    for dialect in ("sqlite", "postgres"):
        versions = [m.version for m in available_migrations(dialect)]
        assert versions == list(range(1, len(versions) + 1))
    assert latest_version() == len(available_migrations("sqlite"))


async def test_create_database_maps_synapse_args() -> None:
    db = create_database(
        "psycopg",
        {"user": "u", "password": "p", "database": "hs", "host": "h", "port": 5433, "cp_min": 3, "cp_max": 7},
    )
    assert (db.min_size, db.max_size) == (3, 7)
    assert "dbname=hs" in db.conninfo and "cp_min" not in db.conninfo and "port=5433" in db.conninfo
    with pytest.raises(ValueError, match="unknown database engine"):
        create_database("mysql", {})
