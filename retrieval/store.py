"""The SQLite store of documents and chunks: the source of truth the index is rebuilt from."""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.chunking import Chunk
from retrieval.records import INDEXED, ChunkRecord, DocumentRecord

logger = logging.getLogger(__name__)

_SCHEMA_VERSION = "1"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS documents (
    id TEXT PRIMARY KEY,
    metadata TEXT NOT NULL,
    text TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
-- AUTOINCREMENT: a chunk id is never reused, even after the highest one is deleted, so
-- ids held elsewhere (FAISS tombstones, KV caches, clients) never point at other text.
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    document_id TEXT NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    text TEXT NOT NULL,
    token_count INTEGER NOT NULL,
    content_hash TEXT NOT NULL,
    embedding BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_by_document ON chunks (document_id, position);
"""
_CHUNK_COLUMNS = "c.id, c.document_id, c.position, c.text, c.token_count, c.content_hash"


class DocumentStore:
    """Documents, their chunks and the chunks' embeddings in one SQLite file (WAL mode).

    Safe to share between threads: each thread gets its own connection, so searches read
    while an ingestion writes. Writers are expected to be serialised by the caller.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._connection().executescript(_SCHEMA)
        if self.get_meta("schema_version") is None:
            self.set_meta("schema_version", _SCHEMA_VERSION)

    def close(self) -> None:
        """Close every thread's connection."""
        with self._connections_lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()

    def get_meta(self, key: str) -> str | None:
        """A value of the store's key-value metadata (schema version, embedding model)."""
        row = self._connection().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        """Set a value of the store's key-value metadata."""
        with self._transaction(write=True) as conn:
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def replace_document(
        self,
        document_id: str,
        text: str,
        metadata: dict[str, Any],
        chunks: Sequence[Chunk],
        vectors: np.ndarray,
    ) -> tuple[DocumentRecord, np.ndarray]:
        """Store a document and its chunks, replacing any earlier version in one transaction.

        Returns the stored record (with chunks) and the ids of the chunks it replaced.
        """
        now = _now()
        with self._transaction(write=True) as conn:
            old_ids = _ids(
                conn.execute("SELECT id FROM chunks WHERE document_id = ?", (document_id,))
            )
            conn.execute("DELETE FROM chunks WHERE document_id = ?", (document_id,))
            conn.execute(
                "INSERT INTO documents (id, metadata, text, state, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
                "metadata = excluded.metadata, text = excluded.text, state = excluded.state, "
                "updated_at = excluded.updated_at",
                (document_id, json.dumps(metadata), text, INDEXED, now, now),
            )
            for chunk, vector in zip(chunks, vectors, strict=True):
                conn.execute(
                    "INSERT INTO chunks (document_id, position, text, token_count, content_hash,"
                    " embedding) VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        document_id,
                        chunk.position,
                        chunk.text,
                        chunk.token_count,
                        chunk.content_hash,
                        np.asarray(vector, dtype=np.float32).tobytes(),
                    ),
                )
            record = self._document(conn, document_id, with_chunks=True)
        assert record is not None  # written in this transaction
        return record, old_ids

    def delete_document(self, document_id: str) -> np.ndarray | None:
        """Delete a document and its chunks; returns the deleted chunk ids, None if unknown."""
        with self._transaction(write=True) as conn:
            ids = _ids(conn.execute("SELECT id FROM chunks WHERE document_id = ?", (document_id,)))
            deleted = conn.execute("DELETE FROM documents WHERE id = ?", (document_id,)).rowcount
        return ids if deleted else None

    def get_document(self, document_id: str) -> DocumentRecord | None:
        """The document with its text and chunks, or None."""
        with self._transaction() as conn:
            return self._document(conn, document_id, with_chunks=True)

    def list_documents(self) -> list[DocumentRecord]:
        """Summaries (no text, no chunks) of every document, oldest first."""
        rows = (
            self._connection()
            .execute(
                "SELECT d.id, d.metadata, d.state, d.created_at, d.updated_at, "
                "(SELECT count(*) FROM chunks c WHERE c.document_id = d.id) "
                "FROM documents d ORDER BY d.created_at, d.id"
            )
            .fetchall()
        )
        return [_document_record(row) for row in rows]

    def chunks_of(self, document_id: str) -> list[ChunkRecord]:
        """The document's chunks in order (empty if the document is unknown)."""
        rows = (
            self._connection()
            .execute(
                f"SELECT {_CHUNK_COLUMNS} FROM chunks c WHERE c.document_id = ? ORDER BY c.position",
                (document_id,),
            )
            .fetchall()
        )
        return [ChunkRecord(*row) for row in rows]

    def chunks_with_metadata(self, ids: Sequence[int]) -> dict[int, tuple[ChunkRecord, str]]:
        """Stored chunks among `ids`, each with its document's metadata JSON."""
        rows = (
            self._connection()
            .execute(
                f"SELECT {_CHUNK_COLUMNS}, d.metadata FROM chunks c "
                "JOIN documents d ON d.id = c.document_id "
                "WHERE c.id IN (SELECT value FROM json_each(?))",
                (json.dumps([int(i) for i in ids]),),
            )
            .fetchall()
        )
        return {row[0]: (ChunkRecord(*row[:6]), row[6]) for row in rows}

    def document_metadata(self) -> Iterator[tuple[str, str]]:
        """(document id, metadata JSON) of every document."""
        yield from self._connection().execute("SELECT id, metadata FROM documents")

    def chunk_ids(self) -> np.ndarray:
        """Ids of every stored chunk, ascending."""
        return _ids(self._connection().execute("SELECT id FROM chunks ORDER BY id"))

    def count_chunks(self) -> int:
        """Number of stored chunks."""
        return self._connection().execute("SELECT count(*) FROM chunks").fetchone()[0]

    def vectors(
        self, document_ids: Sequence[str] | None = None, batch_size: int = 20_000
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Stored (ids, vectors) in batches, of all chunks or of the given documents' chunks."""
        if document_ids is None:
            cursor = self._connection().execute("SELECT id, embedding FROM chunks ORDER BY id")
        else:
            cursor = self._connection().execute(
                "SELECT id, embedding FROM chunks "
                "WHERE document_id IN (SELECT value FROM json_each(?)) ORDER BY id",
                (json.dumps(list(document_ids)),),
            )
        while rows := cursor.fetchmany(batch_size):
            ids = np.fromiter((row[0] for row in rows), dtype=np.int64, count=len(rows))
            vectors = np.frombuffer(b"".join(row[1] for row in rows), dtype=np.float32)
            yield ids, vectors.reshape(len(rows), -1)

    def chunk_texts(self, batch_size: int = 1_000) -> Iterator[tuple[np.ndarray, list[str]]]:
        """(ids, texts) of every chunk in batches, for re-embedding with another model.

        Each batch is its own query, so the caller may write between batches.
        """
        last_id = -1
        while (
            rows := self._connection()
            .execute(
                "SELECT id, text FROM chunks WHERE id > ? ORDER BY id LIMIT ?",
                (last_id, batch_size),
            )
            .fetchall()
        ):
            last_id = rows[-1][0]
            yield np.array([row[0] for row in rows], dtype=np.int64), [row[1] for row in rows]

    def set_vectors(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Overwrite the stored embeddings of chunks."""
        with self._transaction(write=True) as conn:
            conn.executemany(
                "UPDATE chunks SET embedding = ? WHERE id = ?",
                ((np.asarray(v, dtype=np.float32).tobytes(), int(i)) for i, v in zip(ids, vectors)),
            )

    def _document(
        self, conn: sqlite3.Connection, document_id: str, with_chunks: bool
    ) -> DocumentRecord | None:
        row = conn.execute(
            "SELECT id, metadata, state, created_at, updated_at, text FROM documents WHERE id = ?",
            (document_id,),
        ).fetchone()
        if row is None:
            return None
        chunks = conn.execute(
            f"SELECT {_CHUNK_COLUMNS} FROM chunks c WHERE c.document_id = ? ORDER BY c.position",
            (document_id,),
        ).fetchall()
        records = tuple(ChunkRecord(*chunk) for chunk in chunks)
        return _document_record((*row[:5], len(records)), text=row[5], chunks=records)

    def _connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            # Autocommit mode: transactions are explicit (see _transaction), reads included,
            # so a multi-statement read sees one snapshot.
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA busy_timeout = 10000")
            self._local.conn = conn
            with self._connections_lock:
                self._connections.append(conn)
        return conn

    @contextmanager
    def _transaction(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")


def _ids(cursor: sqlite3.Cursor) -> np.ndarray:
    return np.array([row[0] for row in cursor], dtype=np.int64)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _document_record(
    row: tuple, text: str | None = None, chunks: tuple[ChunkRecord, ...] | None = None
) -> DocumentRecord:
    document_id, metadata, state, created_at, updated_at, chunk_count = row
    return DocumentRecord(
        id=document_id,
        metadata=json.loads(metadata),
        state=state,
        created_at=datetime.fromisoformat(created_at),
        updated_at=datetime.fromisoformat(updated_at),
        chunk_count=chunk_count,
        text=text,
        chunks=chunks,
    )
