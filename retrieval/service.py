"""The retrieval service: ingest documents (chunk, embed, store, index), search, delete."""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

import numpy as np

from retrieval.chunking import Chunker
from retrieval.database import Database
from retrieval.embedding import Embedder
from retrieval.errors import (
    DocumentNotFound,
    InvalidDocument,
    InvalidQuery,
    ServiceClosed,
    StoreUnavailable,
)
from retrieval.records import ChunkRecord, DocumentRecord, SearchHit
from retrieval.replica_index import ReplicaIndex
from retrieval.store import DocumentStore

logger = logging.getLogger(__name__)

INDEX_FILE = "index.faiss"
# Filtered searches fetch this many times top_k from FAISS before filtering; if too few
# survive, the filter is selective and an exact search over the matching chunks is cheap.
FILTER_OVERFETCH = 8
# The follower logs an unreachable database at most this often.
UNAVAILABLE_WARNING_INTERVAL_S = 30.0
# The follower looks at most this often whether the change log has grown past what it keeps.
PRUNE_CHECK_INTERVAL_S = 60.0

Scalar = str | int | float | bool | None


class RetrievalService:
    """Documents in, relevant chunks out.

    The database (SQLite under `data_dir`, or PostgreSQL at `database_url`) is the source of
    truth, embeddings included, shared by every replica. The FAISS index (`index.faiss`) is
    this replica's cache of the chunk table: it follows the table's change log, applied on
    each local write and by a follower thread every `follow_interval_s`, so another
    replica's adds and deletes become searchable here within about that interval. A search
    never returns a chunk that is not in the table.

    If the database cannot be reached at start, the service opens anyway and keeps trying in
    the background; meanwhile (and during any later outage) calls raise `StoreUnavailable`
    and `unavailable_reason` says why. Thread-safe. The index is flat (exact) up to
    `hnsw_threshold` chunks and HNSW beyond. The change log keeps its last `change_log_keep`
    versions (the follower prunes it); a replica that was down for longer rebuilds its index
    from the table when it comes back.
    """

    def __init__(
        self,
        data_dir: Path,
        count_tokens: Callable[[str], int],
        embedder: Embedder | None = None,
        chunk_tokens: int = 256,
        chunk_overlap: int = 0,
        hnsw_threshold: int = 50_000,
        device: str | None = None,
        save_interval_s: float = 5.0,
        database_url: str = "",
        follow_interval_s: float = 0.25,
        change_log_keep: int = 100_000,
    ) -> None:
        if change_log_keep < 1:
            raise ValueError(f"change_log_keep must be at least 1, got {change_log_keep}")
        self._change_log_keep = change_log_keep
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._chunker = Chunker(count_tokens, chunk_tokens, chunk_overlap)
        self._embedder = embedder or Embedder(device=device)
        use_gpu = (device or self._embedder.device).startswith("cuda")
        self.database = Database(database_url, self.data_dir)
        self._store = DocumentStore(self.database)
        self._index = ReplicaIndex(
            self._store,
            self.data_dir / INDEX_FILE,
            self._embedder.dimension,
            hnsw_threshold,
            use_gpu,
            save_interval_s,
        )
        self._opened = False
        self._closed = False
        self._open_error: str | None = None
        self._stop = threading.Event()
        self._open_or_defer()
        self._follower = threading.Thread(
            target=self._follow, args=(follow_interval_s,), name="index-follower", daemon=True
        )
        self._follower.start()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def embedder(self) -> Embedder:
        """The embedder in use (shared with whoever passed it in)."""
        return self._embedder

    @property
    def index_version(self) -> int:
        """The change version this replica's index reflects."""
        return self._index.version

    @property
    def index_kind(self) -> str:
        """The kind of this replica's index: flat (exact) or hnsw."""
        return self._index.kind

    def index_ids(self) -> np.ndarray:
        """Ids of the chunks this replica's index can return, ascending."""
        return self._index.ids()

    def stored_chunk_ids(self) -> np.ndarray:
        """Ids of every chunk in the table, ascending."""
        self._check_ready()
        return self._store.chunk_ids()

    def unavailable_reason(self) -> str | None:
        """Why the service cannot serve now (the database is unreachable), or None."""
        if not self._opened:
            return self._open_error or "the index is being loaded"
        if self.database.last_error is not None:
            return f"the database is unavailable: {self.database.last_error}"
        return None

    def add_document(
        self, text: str, document_id: str | None = None, metadata: dict[str, Any] | None = None
    ) -> DocumentRecord:
        """Chunk, embed, store and index a document; returns its record with its chunks.

        A document with the same id is replaced: its old chunks leave the table in the same
        transaction. Raises `InvalidDocument` for blank text or metadata that is not a JSON
        object, `StoreUnavailable` when the database cannot be reached.
        """
        document_id = document_id or uuid.uuid4().hex
        metadata = _validated_metadata(metadata)
        chunks = self._chunker.split(text, document_id)
        if not chunks:
            raise InvalidDocument(f"document {document_id!r} has no text")
        # Embedding is the slow part; it runs before the transaction so other writers are not
        # held up by it.
        vectors = self._embedder.embed([chunk.text for chunk in chunks])
        self._check_ready()
        record, old_ids = self._store.replace_document(document_id, text, metadata, chunks, vectors)
        self._index.sync()
        logger.info(
            "indexed document %s: %d chunks (%d replaced)", document_id, len(chunks), len(old_ids)
        )
        return record

    def delete_document(self, document_id: str) -> bool:
        """Delete a document and all its chunks; False if there was no such document."""
        self._check_ready()
        chunk_ids = self._store.delete_document(document_id)
        if chunk_ids is None:
            return False
        self._index.sync()
        logger.info("deleted document %s (%d chunks)", document_id, len(chunk_ids))
        return True

    def get_document(self, document_id: str) -> DocumentRecord | None:
        """The document with its text and chunks, or None."""
        self._check_open()
        return self._store.get_document(document_id)

    def list_documents(self) -> list[DocumentRecord]:
        """Summaries of all documents (text and chunks left out), oldest first."""
        self._check_open()
        return self._store.list_documents()

    def chunks_of(self, document_id: str) -> list[ChunkRecord]:
        """The document's chunks in order; raises `DocumentNotFound` for an unknown id."""
        self._check_open()
        chunks = self._store.chunks_of(document_id)
        if not chunks and self._store.get_document(document_id) is None:
            raise DocumentNotFound(f"no document with id {document_id!r}")
        return chunks

    def search(
        self, query: str, top_k: int = 8, filters: dict[str, Scalar] | None = None
    ) -> list[SearchHit]:
        """The `top_k` chunks most similar to `query`, best first.

        `filters` keeps only chunks whose document metadata has each key with exactly the
        given value. Raises `InvalidQuery` for top_k < 1 or filters that are not key to scalar.
        """
        self._check_ready()
        if top_k < 1:
            raise InvalidQuery(f"top_k must be at least 1, got {top_k}")
        filters = _validated_filters(filters)
        query_vector = self._embedder.embed([query])
        live = self._index.live_count
        fetch = top_k * FILTER_OVERFETCH if filters else top_k
        found = self._index.search(query_vector, fetch)
        if found is None:
            return []
        scores, ids = found
        hits = self._hits(scores[0], ids[0], filters, top_k)
        if filters and len(hits) < top_k and fetch < live:
            hits = self._exact_filtered_search(query_vector[0], filters, top_k)
        return hits

    def sync(self) -> int:
        """Apply the table's changes to this replica's index now; how many there were."""
        self._check_ready()
        return self._index.sync()

    def save(self) -> None:
        """Write the index to disk now (it is otherwise saved periodically and on close)."""
        self._check_ready()
        self._index.save()

    def close(self) -> None:
        """Stop following, save the index and close the database; the service cannot be used
        afterwards."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._follower.join()
        if self._opened:
            self._index.close()
        self.database.close()

    def _open_or_defer(self) -> None:
        """Open the index now; if the database cannot be reached, the follower retries."""
        try:
            reembedded = self._check_embedding_model()
            self._index.open(force_rebuild=reembedded)
        except StoreUnavailable as error:
            self._open_error = str(error)
            logger.warning("%s; retrying in the background", error)
            return
        self._opened = True
        self._open_error = None

    def prune_change_log(self) -> int:
        """Delete the change log's entries beyond the versions it keeps; how many."""
        self._check_ready()
        return self._store.prune_changes(self._change_log_keep)

    def _follow(self, interval_s: float) -> None:
        warned = 0.0
        pruned_at = time.monotonic()
        while not self._stop.wait(interval_s):
            try:
                if self._opened:
                    self._index.sync()
                    if time.monotonic() - pruned_at >= PRUNE_CHECK_INTERVAL_S:
                        pruned_at = time.monotonic()
                        self.prune_change_log()
                else:
                    self._open_or_defer()
            except StoreUnavailable as error:
                if time.monotonic() - warned > UNAVAILABLE_WARNING_INTERVAL_S:
                    logger.warning("index follower: %s", error)
                    warned = time.monotonic()
            except Exception:  # the follower must outlive any one failure
                logger.exception("index follower failed; retrying")

    def _check_open(self) -> None:
        if self._closed:
            raise ServiceClosed("the retrieval service is closed")

    def _check_ready(self) -> None:
        self._check_open()
        if not self._opened:
            raise StoreUnavailable(self._open_error or "the index is being loaded")

    def _hits(
        self, scores: np.ndarray, ids: np.ndarray, filters: dict[str, Scalar], top_k: int
    ) -> list[SearchHit]:
        found = [(int(i), float(s)) for i, s in zip(ids, scores) if i >= 0]
        # Chunks missing from the table were deleted after the index last followed it.
        rows = self._store.chunks_with_metadata([i for i, _ in found])
        hits: list[SearchHit] = []
        metadata_cache: dict[str, dict[str, Any]] = {}
        for chunk_id, score in found:
            if chunk_id not in rows:
                continue
            chunk, metadata_json = rows[chunk_id]
            if filters:
                if metadata_json not in metadata_cache:
                    metadata_cache[metadata_json] = json.loads(metadata_json)
                if not _matches(metadata_cache[metadata_json], filters):
                    continue
            hits.append(_hit(chunk, score))
            if len(hits) == top_k:
                break
        return hits

    def _exact_filtered_search(
        self, query_vector: np.ndarray, filters: dict[str, Scalar], top_k: int
    ) -> list[SearchHit]:
        documents = [
            document_id
            for document_id, metadata_json in self._store.document_metadata()
            if _matches(json.loads(metadata_json), filters)
        ]
        if not documents:
            return []
        all_ids, all_scores = [], []
        for ids, vectors in self._store.vectors(documents):
            all_ids.append(ids)
            all_scores.append(vectors @ query_vector)
        if not all_ids:
            return []
        ids, scores = np.concatenate(all_ids), np.concatenate(all_scores)
        best = np.argsort(-scores, kind="stable")[:top_k]
        return self._hits(scores[best], ids[best], {}, top_k)

    def _check_embedding_model(self) -> bool:
        """Re-embed every stored chunk if the table was built with another model.

        Returns True when it re-embedded (every replica's index is then rebuilt).
        """
        fingerprint = self._embedder.fingerprint
        stored = self._store.get_meta("embedding_model")
        if stored == fingerprint:
            return False
        count = self._store.count_chunks()
        if stored is not None and count:
            logger.warning(
                "the table was embedded with %s, this service uses %s: re-embedding %d chunks",
                stored,
                fingerprint,
                count,
            )
            for ids, texts in self._store.chunk_texts():
                self._store.set_vectors(ids, self._embedder.embed(texts))
            self._store.log_rebuild()
        self._store.set_meta("embedding_model", fingerprint)
        return stored is not None and count > 0


def _hit(chunk: ChunkRecord, score: float) -> SearchHit:
    return SearchHit(
        document_id=chunk.document_id,
        chunk_id=chunk.id,
        score=score,
        text=chunk.text,
        position=chunk.position,
        content_hash=chunk.content_hash,
    )


def _validated_metadata(metadata: dict[str, Any] | None) -> dict[str, Any]:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) for k in metadata):
        raise InvalidDocument("metadata must be a JSON object (a dict with string keys)")
    try:
        json.dumps(metadata)
    except (TypeError, ValueError) as error:
        raise InvalidDocument(f"metadata is not JSON-serialisable: {error}") from error
    return metadata


def _validated_filters(filters: dict[str, Scalar] | None) -> dict[str, Scalar]:
    if not filters:
        return {}
    if not isinstance(filters, dict) or not all(
        isinstance(k, str) and (v is None or isinstance(v, (str, int, float, bool)))
        for k, v in filters.items()
    ):
        raise InvalidQuery("filters must map metadata keys to str, number, bool or null values")
    return filters


def _matches(metadata: dict[str, Any], filters: dict[str, Scalar]) -> bool:
    missing = object()
    for key, wanted in filters.items():
        value = metadata.get(key, missing)
        # True == 1 in Python; a filter on a flag must not match a count and vice versa.
        if value != wanted or isinstance(value, bool) != isinstance(wanted, bool):
            return False
    return True
