"""The connection to the shared database: SQLite under the data dir, or PostgreSQL by URL.

Every statement runs inside `read()` or `write()`, which turn a database that cannot be
reached (or stays locked) into `StoreUnavailable`, an error the caller may retry, and which
bring the schema up to date on the first use (see `retrieval.schema`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from retrieval import schema
from retrieval.errors import StoreUnavailable

logger = logging.getLogger(__name__)

STORE_FILE = "documents.sqlite3"
CONNECT_TIMEOUT_S = 5
# How long a statement waits for a lock (SQLite) or a pooled connection before giving up.
BUSY_TIMEOUT_S = 10
_UPGRADE_ATTEMPTS = 3


class Database:
    """A SQLAlchemy engine on `url`, or on `data_dir / documents.sqlite3` when `url` is empty.

    Thread-safe. With SQLite, a writing transaction takes the write lock at its start
    (`BEGIN IMMEDIATE`), so it never fails half-way on a lock another writer took after it
    read; SQLite serves one process, which is what the embedded default is for.
    """

    def __init__(self, url: str, data_dir: Path) -> None:
        if url:
            parsed = sa.make_url(url)
            if parsed.drivername in ("postgresql", "postgres"):
                parsed = parsed.set(drivername="postgresql+psycopg")
        else:
            Path(data_dir).mkdir(parents=True, exist_ok=True)
            parsed = sa.URL.create("sqlite", database=str(Path(data_dir) / STORE_FILE))
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        self.description = parsed.render_as_string(hide_password=True)
        if self.is_sqlite:
            self.engine = sa.create_engine(
                parsed, connect_args={"check_same_thread": False, "timeout": BUSY_TIMEOUT_S}
            )
            _configure_sqlite(self.engine)
        else:
            self.engine = sa.create_engine(
                parsed,
                pool_pre_ping=True,
                # At most 15 connections a process: five replicas stay within PostgreSQL's
                # default of 100.
                pool_size=5,
                max_overflow=10,
                pool_timeout=BUSY_TIMEOUT_S,
                connect_args={"connect_timeout": CONNECT_TIMEOUT_S},
            )
        self._schema_lock = threading.Lock()
        self._schema_ready = False
        self.last_error: str | None = None

    def close(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()

    @contextmanager
    def read(self) -> Iterator[sa.Connection]:
        """A connection in a transaction that is rolled back at the end (reads one snapshot
        on SQLite; each statement its own on PostgreSQL)."""
        self.ensure_schema()
        with self._reachable(), self.engine.connect() as conn:
            yield conn

    @contextmanager
    def write(self) -> Iterator[sa.Connection]:
        """A connection in a transaction committed at the end, rolled back on an exception."""
        self.ensure_schema()
        with self._reachable(), self._begin() as conn:
            yield conn

    def ensure_schema(self) -> None:
        """Create or upgrade the tables once per process; `StoreUnavailable` if unreachable."""
        if self._schema_ready:
            return
        with self._schema_lock:
            if self._schema_ready:
                return
            for attempt in range(1, _UPGRADE_ATTEMPTS + 1):
                try:
                    with self._reachable(), self._begin() as conn:
                        found = schema.upgrade(conn)
                    break
                except (sa.exc.IntegrityError, sa.exc.ProgrammingError):
                    # Another process created the same tables at the same moment.
                    if attempt == _UPGRADE_ATTEMPTS:
                        raise
                    time.sleep(0.2 * attempt)
            if found != schema.SCHEMA_VERSION:
                logger.info(
                    "database %s: schema version %d -> %d",
                    self.description, found, schema.SCHEMA_VERSION,
                )
            self._schema_ready = True

    @contextmanager
    def _begin(self) -> Iterator[sa.Connection]:
        with self.engine.connect() as conn:
            conn.execution_options(samkv_write=True)
            with conn.begin():
                yield conn

    @contextmanager
    def _reachable(self) -> Iterator[None]:
        try:
            yield
        except (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.TimeoutError) as error:
            reason = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
            self.last_error = reason
            raise StoreUnavailable(f"the database is unavailable: {reason}") from error
        else:
            self.last_error = None


def _configure_sqlite(engine: sa.Engine) -> None:
    """Let SQLAlchemy, not the sqlite3 module, start transactions, with the pragmas we need."""

    @sa.event.listens_for(engine, "connect")
    def connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        for pragma in (
            "journal_mode = WAL",
            "synchronous = NORMAL",
            "foreign_keys = ON",
            f"busy_timeout = {BUSY_TIMEOUT_S * 1000}",
        ):
            dbapi_connection.execute(f"PRAGMA {pragma}")

    @sa.event.listens_for(engine, "begin")
    def begin(conn: sa.Connection) -> None:
        write = conn.get_execution_options().get("samkv_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")
