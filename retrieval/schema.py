"""The tables of the shared database, and the versioned migrations that create them.

One set of tables serves SQLite (the embedded default, a file under the data dir) and
PostgreSQL (`SAMKV_DATABASE_URL`), written with SQLAlchemy Core constructs only. The schema
version is a row of `meta`; `upgrade` brings an older database to `SCHEMA_VERSION` in steps.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import sqlalchemy as sa

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 2
# The row of `sequences` that numbers changes to the chunk table (see `changes`).
CHANGES_SEQUENCE = "changes"

# SQLite gives never-reused ids only to an INTEGER PRIMARY KEY declared AUTOINCREMENT.
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

metadata = sa.MetaData()

meta = sa.Table(
    "meta",
    metadata,
    sa.Column("key", sa.Text, primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

documents = sa.Table(
    "documents",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("metadata", sa.Text, nullable=False),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("state", sa.Text, nullable=False),
    sa.Column("created_at", sa.Text, nullable=False),
    sa.Column("updated_at", sa.Text, nullable=False),
)

# A chunk id is never reused, even after the highest one is deleted, so ids held elsewhere
# (FAISS indexes of every replica, KV caches, clients) never point at other text.
chunks = sa.Table(
    "chunks",
    metadata,
    sa.Column("id", _ID, primary_key=True, autoincrement=True),
    sa.Column(
        "document_id",
        sa.Text,
        sa.ForeignKey("documents.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("token_count", sa.Integer, nullable=False),
    sa.Column("content_hash", sa.Text, nullable=False),
    sa.Column("embedding", sa.LargeBinary, nullable=False),
    sa.Index("chunks_by_document", "document_id", "position"),
    sqlite_autoincrement=True,
)

# Counters bumped as the first statement of a writing transaction: the row lock serialises
# writers until they commit, so the numbers they take become visible in increasing order.
sequences = sa.Table(
    "sequences",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("value", sa.BigInteger, nullable=False),
)

# The change log every replica's index follows: (version, chunk id, add/remove/rebuild).
changes = sa.Table(
    "changes",
    metadata,
    sa.Column("id", _ID, primary_key=True, autoincrement=True),
    sa.Column("version", sa.BigInteger, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("chunk_id", sa.BigInteger, nullable=False),
    sa.Index("changes_by_version", "version"),
    sqlite_autoincrement=True,
)

# The durable ingestion queue: a job and the documents it was acknowledged with.
jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("error", sa.Text),
    sa.Column("documents_total", sa.Integer, nullable=False),
    sa.Column("documents_indexed", sa.Integer, nullable=False, default=0),
    sa.Column("chunks_total", sa.Integer, nullable=False, default=0),
    sa.Column("chunks_stored", sa.Integer, nullable=False, default=0),
    sa.Column("owner", sa.Text),
    sa.Column("lease_expires_at", sa.Float),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Index("jobs_by_status", "status", "created_at"),
)

job_documents = sa.Table(
    "job_documents",
    metadata,
    sa.Column(
        "job_id", sa.Text, sa.ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    ),
    sa.Column("position", sa.Integer, primary_key=True),
    sa.Column("document_id", sa.Text, nullable=False),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("metadata", sa.Text, nullable=False),
)


def _create_v1(conn: sa.Connection) -> None:
    metadata.create_all(conn, tables=[meta, documents, chunks])


def _create_v2(conn: sa.Connection) -> None:
    """The change log and its sequence, and the ingestion queue."""
    metadata.create_all(conn, tables=[sequences, changes, jobs, job_documents])
    conn.execute(sa.insert(sequences).values(name=CHANGES_SEQUENCE, value=0))


# MIGRATIONS[n] brings a database at version n - 1 to version n.
MIGRATIONS: dict[int, Callable[[sa.Connection], None]] = {1: _create_v1, 2: _create_v2}


def schema_version(conn: sa.Connection) -> int:
    """The version recorded in the database; 0 for an empty one."""
    if not sa.inspect(conn).has_table(meta.name):
        return 0
    value = conn.execute(sa.select(meta.c.value).where(meta.c.key == "schema_version")).scalar()
    return int(value) if value is not None else 0


def upgrade(conn: sa.Connection) -> int:
    """Run the migrations the database lacks, in one transaction; the version it had.

    Raises RuntimeError for a database written by a newer release.
    """
    found = schema_version(conn)
    if found > SCHEMA_VERSION:
        raise RuntimeError(
            f"the database has schema version {found}; this release knows up to "
            f"{SCHEMA_VERSION}: upgrade samkv-rag"
        )
    for version in range(found + 1, SCHEMA_VERSION + 1):
        logger.info("upgrading the database schema to version %d", version)
        MIGRATIONS[version](conn)
    if found != SCHEMA_VERSION:
        conn.execute(sa.delete(meta).where(meta.c.key == "schema_version"))
        conn.execute(sa.insert(meta).values(key="schema_version", value=str(SCHEMA_VERSION)))
    return found
