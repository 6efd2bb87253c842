"""The store of documents and chunks: the source of truth every replica's index follows.

Each change to the chunk table is written, in the same transaction, to the change log under
a version taken from a counter row (see `retrieval.schema`), so a reader that applies the log
in version order sees the table's history in commit order.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
import sqlalchemy as sa

from retrieval.chunking import Chunk
from retrieval.database import Database
from retrieval.records import INDEXED, ChunkRecord, DocumentRecord
from retrieval.schema import CHANGES_SEQUENCE, changes, chunks, documents, meta, sequences

logger = logging.getLogger(__name__)

ADD, REMOVE, REBUILD = "add", "remove", "rebuild"
# The `meta` key of the last version whose changes `prune_changes` deleted.
PRUNED_META_KEY = "changes_pruned_through"
_CHUNK_COLUMNS = (
    chunks.c.id,
    chunks.c.document_id,
    chunks.c.position,
    chunks.c.text,
    chunks.c.token_count,
    chunks.c.content_hash,
)


@dataclass(frozen=True)
class ChangeBatch:
    """The changes after some version up to `version`, in the order they were made."""

    version: int
    changes: list[tuple[str, int]]


class DocumentStore:
    """Documents, their chunks and the chunks' embeddings in the shared database. Thread-safe."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def get_meta(self, key: str) -> str | None:
        """A value of the store's key-value metadata (schema version, embedding model)."""
        with self.database.read() as conn:
            return conn.execute(sa.select(meta.c.value).where(meta.c.key == key)).scalar()

    def set_meta(self, key: str, value: str) -> None:
        """Set a value of the store's key-value metadata."""
        with self.database.write() as conn:
            _next_version(conn)  # serialises writers, so the delete-insert below cannot race
            _set_meta(conn, key, value)

    def replace_document(
        self,
        document_id: str,
        text: str,
        metadata: dict[str, Any],
        new_chunks: Sequence[Chunk],
        vectors: np.ndarray,
    ) -> tuple[DocumentRecord, np.ndarray]:
        """Store a document and its chunks, replacing any earlier version in one transaction.

        Writers are serialised by the change counter, so of two replacements of one id the
        later one removes all of the earlier one's chunks: one version wins whole. Returns
        the stored record (with chunks) and the ids of the chunks it replaced.
        """
        now = _now()
        with self.database.write() as conn:
            version = _next_version(conn)
            old_ids = _chunk_ids_of(conn, document_id)
            conn.execute(sa.delete(chunks).where(chunks.c.document_id == document_id))
            values = {"metadata": json.dumps(metadata), "text": text, "state": INDEXED,
                      "updated_at": now}
            updated = conn.execute(
                sa.update(documents).where(documents.c.id == document_id).values(**values)
            ).rowcount
            if not updated:
                conn.execute(sa.insert(documents).values(id=document_id, created_at=now, **values))
            rows = [
                {
                    "document_id": document_id,
                    "position": chunk.position,
                    "text": chunk.text,
                    "token_count": chunk.token_count,
                    "content_hash": chunk.content_hash,
                    "embedding": np.asarray(vector, dtype=np.float32).tobytes(),
                }
                for chunk, vector in zip(new_chunks, vectors, strict=True)
            ]
            new_ids = conn.execute(
                sa.insert(chunks).returning(chunks.c.id, sort_by_parameter_order=True), rows
            ).scalars().all()
            _log_changes(conn, version, REMOVE, old_ids)
            _log_changes(conn, version, ADD, new_ids)
            record = _document(conn, document_id, with_chunks=True)
        assert record is not None  # written in this transaction
        return record, old_ids

    def delete_document(self, document_id: str) -> np.ndarray | None:
        """Delete a document and its chunks; returns the deleted chunk ids, None if unknown."""
        with self.database.write() as conn:
            version = _next_version(conn)
            ids = _chunk_ids_of(conn, document_id)
            conn.execute(sa.delete(chunks).where(chunks.c.document_id == document_id))
            deleted = conn.execute(
                sa.delete(documents).where(documents.c.id == document_id)
            ).rowcount
            _log_changes(conn, version, REMOVE, ids)
        return ids if deleted else None

    def get_document(self, document_id: str) -> DocumentRecord | None:
        """The document with its text and chunks, or None."""
        with self.database.read() as conn:
            return _document(conn, document_id, with_chunks=True)

    def list_documents(self) -> list[DocumentRecord]:
        """Summaries (no text, no chunks) of every document, oldest first."""
        count = (
            sa.select(sa.func.count())
            .where(chunks.c.document_id == documents.c.id)
            .scalar_subquery()
        )
        query = sa.select(
            documents.c.id, documents.c.metadata, documents.c.state, documents.c.created_at,
            documents.c.updated_at, count,
        ).order_by(documents.c.created_at, documents.c.id)
        with self.database.read() as conn:
            return [_document_record(tuple(row)) for row in conn.execute(query)]

    def chunks_of(self, document_id: str) -> list[ChunkRecord]:
        """The document's chunks in order (empty if the document is unknown)."""
        with self.database.read() as conn:
            return _chunks_of(conn, document_id)

    def chunks_with_metadata(self, ids: Sequence[int]) -> dict[int, tuple[ChunkRecord, str]]:
        """Stored chunks among `ids`, each with its document's metadata JSON."""
        if not ids:
            return {}
        query = (
            sa.select(*_CHUNK_COLUMNS, documents.c.metadata)
            .join(documents, documents.c.id == chunks.c.document_id)
            .where(chunks.c.id.in_([int(i) for i in ids]))
        )
        with self.database.read() as conn:
            return {row[0]: (ChunkRecord(*row[:6]), row[6]) for row in conn.execute(query)}

    def document_metadata(self) -> list[tuple[str, str]]:
        """(document id, metadata JSON) of every document."""
        with self.database.read() as conn:
            return [tuple(row) for row in conn.execute(sa.select(documents.c.id, documents.c.metadata))]

    def chunk_ids(self) -> np.ndarray:
        """Ids of every stored chunk, ascending."""
        with self.database.read() as conn:
            return _ids(conn.execute(sa.select(chunks.c.id).order_by(chunks.c.id)))

    def count_chunks(self) -> int:
        """Number of stored chunks."""
        with self.database.read() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(chunks)).scalar_one()

    def vectors(
        self, document_ids: Sequence[str] | None = None, batch_size: int = 20_000
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Stored (ids, vectors) in batches, of all chunks or of the given documents' chunks."""
        where = None if document_ids is None else chunks.c.document_id.in_(list(document_ids))
        for rows in self._pages(chunks.c.embedding, batch_size, where):
            yield _vectors(rows)

    def vectors_of(self, ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of those chunks among `ids` that are stored, ascending."""
        query = (
            sa.select(chunks.c.id, chunks.c.embedding)
            .where(chunks.c.id.in_([int(i) for i in ids]))
            .order_by(chunks.c.id)
        )
        with self.database.read() as conn:
            rows = conn.execute(query).all()
        if not rows:
            return np.empty(0, dtype=np.int64), np.empty((0, 0), dtype=np.float32)
        return _vectors(rows)

    def chunk_texts(self, batch_size: int = 1_000) -> Iterator[tuple[np.ndarray, list[str]]]:
        """(ids, texts) of every chunk in batches, for re-embedding with another model.

        Each batch is its own query, so the caller may write between batches.
        """
        for rows in self._pages(chunks.c.text, batch_size):
            yield np.array([row[0] for row in rows], dtype=np.int64), [row[1] for row in rows]

    def _pages(
        self, column: sa.Column, batch_size: int, where: Any = None
    ) -> Iterator[list[Any]]:
        """(chunk id, `column`) rows in id order, a batch per query (keyset pagination), so no
        connection is held between batches."""
        last_id = -1
        while True:
            query = (
                sa.select(chunks.c.id, column)
                .where(chunks.c.id > last_id)
                .order_by(chunks.c.id)
                .limit(batch_size)
            )
            if where is not None:
                query = query.where(where)
            with self.database.read() as conn:
                rows = conn.execute(query).all()
            if not rows:
                return
            last_id = rows[-1][0]
            yield rows

    def set_vectors(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Overwrite the stored embeddings of chunks."""
        with self.database.write() as conn:
            _next_version(conn)
            conn.execute(
                sa.update(chunks)
                .where(chunks.c.id == sa.bindparam("chunk_id"))
                .values(embedding=sa.bindparam("vector")),
                [
                    {"chunk_id": int(i), "vector": np.asarray(v, dtype=np.float32).tobytes()}
                    for i, v in zip(ids, vectors, strict=True)
                ],
            )

    def log_rebuild(self) -> int:
        """Tell every replica to rebuild its index from the table (after re-embedding)."""
        with self.database.write() as conn:
            version = _next_version(conn)
            conn.execute(sa.insert(changes).values(version=version, kind=REBUILD, chunk_id=0))
        return version

    def current_version(self) -> int:
        """The version of the latest committed change."""
        with self.database.read() as conn:
            return _current_version(conn)

    def changes_since(self, version: int) -> ChangeBatch:
        """Every committed change after `version`, oldest first; a single rebuild when the log
        no longer reaches back to `version` (`prune_changes` deleted what the reader missed)."""
        with self.database.read() as conn:
            latest = _current_version(conn)
            rows = conn.execute(
                sa.select(changes.c.kind, changes.c.chunk_id)
                .where(changes.c.version > version, changes.c.version <= latest)
                .order_by(changes.c.version, changes.c.id)
            ).all()
            # Read after the rows: a prune committed before the rows were read shows here.
            pruned = _pruned_through(conn)
        if version < pruned:
            return ChangeBatch(latest, [(REBUILD, 0)])
        return ChangeBatch(latest, [(kind, int(chunk_id)) for kind, chunk_id in rows])

    def prune_changes(self, keep: int) -> int:
        """Delete the change log's entries older than its last `keep` versions; how many.

        A replica whose index is older than what is left gets a rebuild from `changes_since`
        instead of the changes it missed.
        """
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")
        with self.database.read() as conn:
            if _current_version(conn) - keep <= _pruned_through(conn):
                return 0
        with self.database.write() as conn:
            cutoff = _lock_versions(conn) - keep
            if cutoff <= _pruned_through(conn):
                return 0
            deleted = conn.execute(sa.delete(changes).where(changes.c.version <= cutoff)).rowcount
            _set_meta(conn, PRUNED_META_KEY, str(cutoff))
        logger.info("pruned %d change-log entries up to version %d", deleted, cutoff)
        return deleted


def _next_version(conn: sa.Connection) -> int:
    """Take the next change version; the row lock is held until the transaction ends."""
    row = sequences.c.name == CHANGES_SEQUENCE
    conn.execute(sa.update(sequences).where(row).values(value=sequences.c.value + 1))
    return conn.execute(sa.select(sequences.c.value).where(row)).scalar_one()


def _lock_versions(conn: sa.Connection) -> int:
    """The latest version, with the counter row locked as `_next_version` locks it, without
    taking a version: writers wait until the transaction ends, the log stays dense."""
    row = sequences.c.name == CHANGES_SEQUENCE
    conn.execute(sa.update(sequences).where(row).values(value=sequences.c.value))
    return conn.execute(sa.select(sequences.c.value).where(row)).scalar_one()


def _current_version(conn: sa.Connection) -> int:
    return conn.execute(
        sa.select(sequences.c.value).where(sequences.c.name == CHANGES_SEQUENCE)
    ).scalar_one()


def _pruned_through(conn: sa.Connection) -> int:
    value = conn.execute(sa.select(meta.c.value).where(meta.c.key == PRUNED_META_KEY)).scalar()
    return int(value) if value is not None else 0


def _set_meta(conn: sa.Connection, key: str, value: str) -> None:
    conn.execute(sa.delete(meta).where(meta.c.key == key))
    conn.execute(sa.insert(meta).values(key=key, value=value))


def _log_changes(conn: sa.Connection, version: int, kind: str, ids: Sequence[int]) -> None:
    if len(ids):
        conn.execute(
            sa.insert(changes),
            [{"version": version, "kind": kind, "chunk_id": int(i)} for i in ids],
        )


def _chunk_ids_of(conn: sa.Connection, document_id: str) -> np.ndarray:
    return _ids(conn.execute(sa.select(chunks.c.id).where(chunks.c.document_id == document_id)))


def _chunks_of(conn: sa.Connection, document_id: str) -> list[ChunkRecord]:
    rows = conn.execute(
        sa.select(*_CHUNK_COLUMNS)
        .where(chunks.c.document_id == document_id)
        .order_by(chunks.c.position)
    )
    return [ChunkRecord(*row) for row in rows]


def _document(conn: sa.Connection, document_id: str, with_chunks: bool) -> DocumentRecord | None:
    row = conn.execute(
        sa.select(
            documents.c.id, documents.c.metadata, documents.c.state, documents.c.created_at,
            documents.c.updated_at, documents.c.text,
        ).where(documents.c.id == document_id)
    ).first()
    if row is None:
        return None
    records = tuple(_chunks_of(conn, document_id)) if with_chunks else ()
    return _document_record((*row[:5], len(records)), text=row[5], chunks=records)


def _ids(rows: Any) -> np.ndarray:
    return np.array([row[0] for row in rows], dtype=np.int64)


def _vectors(rows: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    ids = np.fromiter((row[0] for row in rows), dtype=np.int64, count=len(rows))
    vectors = np.frombuffer(b"".join(bytes(row[1]) for row in rows), dtype=np.float32)
    return ids, vectors.reshape(len(rows), -1)


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
