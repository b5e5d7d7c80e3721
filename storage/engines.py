"""Database engines: SQLite (embedded) and PostgreSQL (psycopg 3, async, pooled).

Every store is written against `Database` and `Transaction` and never sees
which engine is underneath. SQL is written once with `?` placeholders; the
PostgreSQL engine rewrites them to psycopg's `%s`. Where the two dialects
really differ (full-text search, sequences) a store asks `db.dialect`.

Transactions are run through `Database.run(name, fn, *args)`: `fn` receives a
`Transaction` and is retried from the start when the engine reports a
serialization failure, a deadlock or a busy database. Work that must happen
only once the transaction has committed (cache invalidation, waking
listeners) is registered with `txn.call_after`.
"""

from __future__ import annotations

import asyncio
import json
import functools
import logging
import random
import sqlite3
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, TypeVar

from prometheus_client import Counter, Gauge, Histogram

logger = logging.getLogger(__name__)

T = TypeVar("T")
Row = tuple[Any, ...]

TRANSACTION_SECONDS = Histogram(
    "homeserver_db_transaction_seconds",
    "Time spent in database transactions, by transaction name",
    ["name"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
TRANSACTION_RETRIES = Counter(
    "homeserver_db_transaction_retries_total",
    "Transactions retried after a serialization failure, deadlock or busy database",
    ["name"],
)
POOL_SIZE = Gauge("homeserver_db_pool_connections", "Open database connections")
POOL_IN_USE = Gauge("homeserver_db_pool_connections_in_use", "Database connections lent out")
POOL_WAITING = Gauge("homeserver_db_pool_requests_waiting", "Requests waiting for a database connection")

MAX_ATTEMPTS = 10


class Transaction(ABC):
    """One open database transaction."""

    def __init__(self) -> None:
        self._after_commit: list[Callable[[], Any]] = []

    @abstractmethod
    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run a statement; returns the number of rows it changed."""

    @abstractmethod
    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run one statement for each parameter row."""

    @abstractmethod
    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Run a query and return all of its rows."""

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    async def fetchval(self, sql: str, params: Sequence[Any] = ()) -> Any:
        row = await self.fetchone(sql, params)
        return row[0] if row else None

    def call_after(self, callback: Callable[[], Any]) -> None:
        """Run `callback` once this transaction has committed (not on rollback)."""
        self._after_commit.append(callback)

    def _run_after_commit(self) -> None:
        for callback in self._after_commit:
            callback()


class Database(ABC):
    """An engine: opens transactions and runs functions inside them with retries."""

    dialect: str

    @abstractmethod
    async def open(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    def _transaction(self, read_committed: bool = False) -> Any:
        """An async context manager yielding a Transaction; commits on success."""

    @abstractmethod
    def _is_retryable(self, exc: BaseException) -> bool: ...

    async def run(
        self, name: str, fn: Callable[..., Awaitable[T]], *args: Any, read_committed: bool = False
    ) -> T:
        """Run `fn(txn, *args)` in a transaction, retrying on conflicts.

        `read_committed` is for transactions that serialize themselves with
        explicit locks (room writes): each statement then sees what the
        previous lock holder committed, which a REPEATABLE READ snapshot,
        taken before the lock was granted, would not.
        """
        for attempt in range(1, MAX_ATTEMPTS + 1):
            start = time.perf_counter()
            try:
                async with self._transaction(read_committed) as txn:
                    result = await fn(txn, *args)
            except Exception as exc:  # noqa: BLE001 - classified just below
                if attempt < MAX_ATTEMPTS and self._is_retryable(exc):
                    TRANSACTION_RETRIES.labels(name).inc()
                    logger.info("transaction %s conflicted (%s); retrying", name, exc)
                    # Jittered, so transactions that collided do not retry in lockstep.
                    await asyncio.sleep(random.uniform(0, 0.01 * 2**attempt))
                    continue
                raise
            finally:
                TRANSACTION_SECONDS.labels(name).observe(time.perf_counter() - start)
            txn._run_after_commit()
            return result
        raise AssertionError("unreachable")

    async def execute(self, name: str, sql: str, params: Sequence[Any] = ()) -> int:
        async def _fn(txn: Transaction) -> int:
            return await txn.execute(sql, params)

        return await self.run(name, _fn)

    async def fetchall(self, name: str, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        async def _fn(txn: Transaction) -> list[Row]:
            return await txn.fetchall(sql, params)

        return await self.run(name, _fn)

    async def fetchone(self, name: str, sql: str, params: Sequence[Any] = ()) -> Row | None:
        rows = await self.fetchall(name, sql, params)
        return rows[0] if rows else None

    async def fetchval(self, name: str, sql: str, params: Sequence[Any] = ()) -> Any:
        row = await self.fetchone(name, sql, params)
        return row[0] if row else None

    async def fetchall_in(self, name: str, sql: str, items: Iterable[Any], *params: Any) -> list[Row]:
        """The rows of `sql`, whose `{}` stands for an IN-list of `items`,
        read in batches; `params` fill the placeholders before the list."""
        rows: list[Row] = []
        for chunk in batches(sorted(set(items))):
            rows.extend(await self.fetchall(name, sql.format(placeholders(len(chunk))), (*params, *chunk)))
        return rows


# --------------------------------------------------------------------------- SQLite


class _SQLiteTransaction(Transaction):
    def __init__(self, conn: sqlite3.Connection) -> None:
        super().__init__()
        self._conn = conn

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self._conn.execute(sql, params).rowcount

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self._conn.executemany(sql, rows)

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return self._conn.execute(sql, params).fetchall()


class SQLiteDatabase(Database):
    """One SQLite connection in WAL mode, used from the event loop.

    Statements on a small embedded database take microseconds, far less than
    a hop to a worker thread, so they run inline. Transactions are serialized
    by a lock because they share the one connection; a transaction body must
    therefore not await anything but its own statements.
    """

    dialect = "sqlite"

    def __init__(self, path: str, synchronous: str = "NORMAL") -> None:
        self.path = path
        self.synchronous = synchronous
        self._conn: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        # WAL + NORMAL survives a crash of this process (the acknowledged
        # transaction is in the WAL); FULL also survives power loss.
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=5000")
        self._conn = conn
        POOL_SIZE.set(1)

    async def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
            POOL_SIZE.set(0)

    @asynccontextmanager
    async def _transaction(self, read_committed: bool = False) -> AsyncIterator[Transaction]:
        # One connection, one transaction at a time: always serializable.
        assert self._conn is not None, "database is not open"
        conn = self._conn
        POOL_WAITING.inc()
        async with self._lock:
            POOL_WAITING.dec()
            POOL_IN_USE.inc()
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield _SQLiteTransaction(conn)
                    conn.execute("COMMIT")
                except BaseException:
                    # A failed COMMIT leaves the transaction open, and some
                    # errors (disk full, I/O) have already rolled it back.
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            finally:
                POOL_IN_USE.dec()

    def _is_retryable(self, exc: BaseException) -> bool:
        return isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc)

    async def executescript(self, script: str) -> None:
        assert self._conn is not None
        async with self._lock:
            self._conn.executescript(script)


# ----------------------------------------------------------------------- PostgreSQL


@functools.lru_cache(maxsize=4096)
def _to_pyformat(sql: str) -> str:
    """Rewrite `?` placeholders to psycopg's `%s` (and escape literal `%`)."""
    return sql.replace("%", "%%").replace("?", "%s")


class _PostgresTransaction(Transaction):
    def __init__(self, cursor: Any) -> None:
        super().__init__()
        self._cur = cursor

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        await self._cur.execute(_to_pyformat(sql), params)
        return self._cur.rowcount

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        await self._cur.executemany(_to_pyformat(sql), list(rows))

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        await self._cur.execute(_to_pyformat(sql), params)
        return await self._cur.fetchall()


class PostgresDatabase(Database):
    """psycopg 3 async connections from a psycopg-pool pool.

    Transactions run at REPEATABLE READ, as Synapse's do: a transaction that
    read a row another one has since changed fails with a serialization
    failure and is retried, so read-modify-write code is as safe here as on
    SQLite, whose transactions are serialized.
    """

    dialect = "postgres"

    def __init__(self, conninfo: str, min_size: int = 2, max_size: int = 10) -> None:
        self.conninfo = conninfo
        self.min_size = min_size
        self.max_size = max_size
        self._pool: Any = None

    async def open(self) -> None:
        from psycopg import IsolationLevel
        from psycopg_pool import AsyncConnectionPool

        async def configure(conn: Any) -> None:
            # Autocommit: a lone statement costs one round trip, not three
            # (BEGIN, statement, COMMIT); `transaction()` still opens real
            # transactions, at this isolation level.
            await conn.set_autocommit(True)
            await conn.set_isolation_level(IsolationLevel.REPEATABLE_READ)

        self._pool = AsyncConnectionPool(
            self.conninfo,
            min_size=self.min_size,
            max_size=self.max_size,
            open=False,
            name="homeserver",
            configure=configure,
        )
        await self._pool.open(wait=True, timeout=30)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    def pool_stats(self) -> dict[str, int]:
        return self._pool.get_stats() if self._pool is not None else {}

    def _update_pool_metrics(self) -> None:
        stats = self._pool.get_stats()
        size = stats.get("pool_size", 0)
        POOL_SIZE.set(size)
        POOL_IN_USE.set(size - stats.get("pool_available", 0))
        POOL_WAITING.set(stats.get("requests_waiting", 0))

    @asynccontextmanager
    async def _transaction(self, read_committed: bool = False) -> AsyncIterator[Transaction]:
        assert self._pool is not None, "database is not open"
        async with self._pool.connection() as conn:
            self._update_pool_metrics()
            try:
                async with conn.transaction():
                    async with conn.cursor() as cur:
                        if read_committed:
                            await cur.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
                        yield _PostgresTransaction(cur)
            finally:
                self._update_pool_metrics()

    def _is_retryable(self, exc: BaseException) -> bool:
        from psycopg import errors

        return isinstance(exc, (errors.SerializationFailure, errors.DeadlockDetected))

    async def _statement(self, name: str, sql: str, params: Sequence[Any], fetch: bool) -> Any:
        """One statement on its own (autocommit): atomic, and one round trip."""
        assert self._pool is not None, "database is not open"
        start = time.perf_counter()
        try:
            async with self._pool.connection() as conn:
                cur = await conn.execute(_to_pyformat(sql), params)
                return await cur.fetchall() if fetch else cur.rowcount
        finally:
            TRANSACTION_SECONDS.labels(name).observe(time.perf_counter() - start)

    async def execute(self, name: str, sql: str, params: Sequence[Any] = ()) -> int:
        return await self._statement(name, sql, params, fetch=False)

    async def fetchall(self, name: str, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return await self._statement(name, sql, params, fetch=True)

    async def dedicated_connection(self, application_name: str) -> Any:
        """An autocommit connection of its own, outside the pool: for what holds a
        connection indefinitely (LISTEN, session-level advisory locks)."""
        import psycopg
        from psycopg.conninfo import conninfo_to_dict

        params: dict[str, Any] = conninfo_to_dict(self.conninfo)
        # Also frees the server side of a peer that vanished without a FIN.
        params.setdefault("keepalives", 1)
        params.setdefault("application_name", application_name)
        return await psycopg.AsyncConnection.connect(autocommit=True, **params)

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Any]:
        """A raw pooled connection, for LISTEN and administrative statements."""
        assert self._pool is not None
        async with self._pool.connection() as conn:
            yield conn


# How many values one `IN (...)` list carries: far below either engine's
# limit on bound parameters, large enough that few round trips are needed.
IN_LIST_BATCH = 500


def batches(items: Sequence[Any]) -> Iterator[list[Any]]:
    """`items` in lists of at most IN_LIST_BATCH, for `IN (...)` queries."""
    for i in range(0, len(items), IN_LIST_BATCH):
        yield list(items[i : i + IN_LIST_BATCH])


def like_pattern(value: str) -> str:
    """A LIKE pattern matching `value` anywhere, its wildcards taken literally
    (with `ESCAPE '\\'` where the engine needs it said)."""
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def placeholders(n: int) -> str:
    """`?, ?, ?` for an `IN (...)` list of n values."""
    return ", ".join("?" * n)


def is_unique_violation(exc: BaseException) -> bool:
    """True if `exc` is a unique/primary-key constraint failure on either engine."""
    if isinstance(exc, sqlite3.IntegrityError):
        return "UNIQUE" in str(exc) or "PRIMARY KEY" in str(exc)
    try:
        from psycopg import errors
    except ImportError:  # pragma: no cover
        return False
    return isinstance(exc, errors.UniqueViolation)


def dump_json(value: Any) -> str:
    """Compact JSON text as stored in the database (UTF-8 kept as is)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
