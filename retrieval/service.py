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
from retrieval.embedding import Embedder
from retrieval.errors import DocumentNotFound, InvalidDocument, InvalidQuery, ServiceClosed
from retrieval.index_file import read_index_file, write_index_file
from retrieval.records import ChunkRecord, DocumentRecord, SearchHit
from retrieval.store import DocumentStore
from retrieval.vector_index import VectorIndex

logger = logging.getLogger(__name__)

STORE_FILE = "documents.sqlite3"
INDEX_FILE = "index.faiss"
# Filtered searches fetch this many times top_k from FAISS before filtering; if too few
# survive, the filter is selective and an exact search over the matching chunks is cheap.
FILTER_OVERFETCH = 8
# HNSW keeps removed vectors as tombstones; past this share the graph is rebuilt.
MAX_TOMBSTONE_SHARE = 0.2

Scalar = str | int | float | bool | None


class RetrievalService:
    """Documents in, relevant chunks out; persisted under `data_dir`.

    The SQLite store (`documents.sqlite3`) is the source of truth, embeddings included; the
    FAISS index (`index.faiss`) is derived from it, saved at most every `save_interval_s`
    after changes and on `close` with a checksum, and checked against the store on start: a
    missing, damaged (checksum), unreadable or stale index is rebuilt from the stored
    embeddings. A search never returns
    a chunk that is not in the store, so a deleted document cannot come back even while the
    index on disk is behind.

    Thread-safe: ingestion and deletion are serialised; searches run alongside them.
    The index is flat (exact) up to `hnsw_threshold` chunks and HNSW beyond.
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
    ) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._chunker = Chunker(count_tokens, chunk_tokens, chunk_overlap)
        self._embedder = embedder or Embedder(device=device)
        self._use_gpu = (device or self._embedder.device).startswith("cuda")
        self._hnsw_threshold = hnsw_threshold
        self._save_interval_s = save_interval_s
        self._index_path = self.data_dir / INDEX_FILE
        # _write_lock serialises changes (store, index, saving); _index_lock guards the FAISS
        # object between a change and the searches that read it.
        self._write_lock = threading.Lock()
        self._index_lock = threading.Lock()
        self._closed = False
        self._dirty = False  # the index has changes not yet saved
        self._store = DocumentStore(self.data_dir / STORE_FILE)
        with self._write_lock:
            reembedded = self._check_embedding_model()
            self._index = self._load_index(force_rebuild=reembedded)
            self._last_save = time.monotonic()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def embedder(self) -> Embedder:
        """The embedder in use (shared with whoever passed it in)."""
        return self._embedder

    def add_document(
        self, text: str, document_id: str | None = None, metadata: dict[str, Any] | None = None
    ) -> DocumentRecord:
        """Chunk, embed, store and index a document; returns its record with its chunks.

        A document with the same id is replaced: its old chunks leave the index and store in
        the same step. Raises `InvalidDocument` for blank text or metadata that is not a
        JSON object.
        """
        document_id = document_id or uuid.uuid4().hex
        metadata = _validated_metadata(metadata)
        chunks = self._chunker.split(text, document_id)
        if not chunks:
            raise InvalidDocument(f"document {document_id!r} has no text")
        # Embedding is the slow part; it runs before taking the lock so searches and other
        # documents' bookkeeping are not held up by it.
        vectors = self._embedder.embed([chunk.text for chunk in chunks])
        with self._write_lock:
            self._check_open()
            record, old_ids = self._store.replace_document(
                document_id, text, metadata, chunks, vectors
            )
            with self._index_lock:
                self._index.remove(old_ids)
                self._index.add(np.array([c.id for c in record.chunks], dtype=np.int64), vectors)
            self._after_change()
        logger.info(
            "indexed document %s: %d chunks (%d replaced)", document_id, len(chunks), len(old_ids)
        )
        return record

    def delete_document(self, document_id: str) -> bool:
        """Delete a document and all its chunks; False if there was no such document."""
        with self._write_lock:
            self._check_open()
            chunk_ids = self._store.delete_document(document_id)
            if chunk_ids is None:
                return False
            with self._index_lock:
                self._index.remove(chunk_ids)
            self._after_change()
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
        self._check_open()
        if top_k < 1:
            raise InvalidQuery(f"top_k must be at least 1, got {top_k}")
        filters = _validated_filters(filters)
        query_vector = self._embedder.embed([query])
        with self._index_lock:
            live = self._index.live_count
            if live == 0:
                return []
            fetch = top_k * FILTER_OVERFETCH if filters else top_k
            scores, ids = self._index.search(query_vector, fetch)
        hits = self._hits(scores[0], ids[0], filters, top_k)
        if filters and len(hits) < top_k and fetch < live:
            hits = self._exact_filtered_search(query_vector[0], filters, top_k)
        return hits

    def save(self) -> None:
        """Write the index to disk now (it is otherwise saved periodically and on close)."""
        with self._write_lock:
            self._check_open()
            self._save_index()

    def close(self) -> None:
        """Save the index and close the store; the service cannot be used afterwards."""
        with self._write_lock:
            if self._closed:
                return
            if self._dirty:
                self._save_index()
            self._store.close()
            self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise ServiceClosed("the retrieval service is closed")

    def _hits(
        self, scores: np.ndarray, ids: np.ndarray, filters: dict[str, Scalar], top_k: int
    ) -> list[SearchHit]:
        found = [(int(i), float(s)) for i, s in zip(ids, scores) if i >= 0]
        # Chunks missing from the store were deleted after the index was last changed.
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
        ids, scores = np.concatenate(all_ids), np.concatenate(all_scores)
        best = np.argsort(-scores, kind="stable")[:top_k]
        return self._hits(scores[best], ids[best], {}, top_k)

    def _after_change(self) -> None:
        """Switch index kind or drop tombstones when due, then save if the interval passed."""
        live = self._index.live_count
        wanted = "hnsw" if live > self._hnsw_threshold else "flat"
        if self._index.kind == "flat" and wanted == "hnsw":
            self._replace_index(f"{live} chunks exceed the HNSW threshold")
        elif self._index.kind == "hnsw" and self._index.tombstone_share > MAX_TOMBSTONE_SHARE:
            share = self._index.tombstone_share
            self._replace_index(f"{share:.0%} of the HNSW index are deleted chunks")
        if time.monotonic() - self._last_save >= self._save_interval_s:
            self._save_index()
        else:
            self._dirty = True

    def _replace_index(self, reason: str) -> None:
        logger.info("rebuilding the index from the store: %s", reason)
        # Built outside the index lock: searches keep using the old index meanwhile, and no
        # change can happen while we hold the write lock.
        index = self._build_index()
        with self._index_lock:
            self._index = index
        self._save_index()

    def _build_index(self) -> VectorIndex:
        count = self._store.count_chunks()
        kind = "hnsw" if count > self._hnsw_threshold else "flat"
        index = VectorIndex(self._embedder.dimension, kind, self._use_gpu)
        for ids, vectors in self._store.vectors():
            index.add(ids, vectors)
        logger.info("built a %s index of %d chunks", kind, index.ntotal)
        return index

    def _load_index(self, force_rebuild: bool) -> VectorIndex:
        """Load the saved index if it matches the store, else rebuild it from the store."""
        stored_ids = self._store.chunk_ids()
        problem = "built for another embedding model" if force_rebuild else None
        index: VectorIndex | None = None
        if problem is None and not self._index_path.exists():
            problem = "missing"
        if problem is None:
            try:
                index = VectorIndex.from_bytes(read_index_file(self._index_path), self._use_gpu)
            except (OSError, ValueError, TypeError) as error:
                problem = f"unreadable ({error})"
        if index is not None and problem is None:
            index_ids = index.ids()
            missing = np.setdiff1d(stored_ids, index_ids, assume_unique=True)
            extra = np.setdiff1d(index_ids, stored_ids)
            if index.dimension != self._embedder.dimension:
                problem = f"of dimension {index.dimension}, not {self._embedder.dimension}"
            elif len(missing) or len(index_ids) != len(np.unique(index_ids)):
                problem = f"stale ({len(missing)} stored chunks are not in it)"
            elif len(extra):
                # HNSW tombstones are saved with the graph, so there they are expected; in a
                # flat index they are chunks deleted after the last save (a crash).
                logger.log(
                    logging.INFO if index.kind == "hnsw" else logging.WARNING,
                    "index %s holds %d chunks deleted since they were indexed; removing them",
                    self._index_path,
                    len(extra),
                )
                index.remove(extra)
                self._dirty = True
        if problem is None and index is not None:
            logger.info("loaded index %s (%d chunks)", self._index_path, index.live_count)
            return index
        if len(stored_ids) or problem != "missing":
            logger.warning(
                "index %s is %s; rebuilding it from the store (%d chunks)",
                self._index_path,
                problem,
                len(stored_ids),
            )
        index = self._build_index()
        self._index = index
        self._save_index()
        return index

    def _check_embedding_model(self) -> bool:
        """Re-embed every stored chunk if the store was built with another model.

        Returns True when it re-embedded (the saved index is then useless).
        """
        fingerprint = self._embedder.fingerprint
        stored = self._store.get_meta("embedding_model")
        if stored == fingerprint:
            return False
        count = self._store.count_chunks()
        if stored is not None and count:
            logger.warning(
                "the store was embedded with %s, this service uses %s: re-embedding %d chunks",
                stored,
                fingerprint,
                count,
            )
            for ids, texts in self._store.chunk_texts():
                self._store.set_vectors(ids, self._embedder.embed(texts))
        self._store.set_meta("embedding_model", fingerprint)
        return stored is not None and count > 0

    def _save_index(self) -> None:
        """Write the index with its checksum, atomically (see `write_index_file`)."""
        write_index_file(self._index_path, self._index.to_bytes())
        self._dirty = False
        self._last_save = time.monotonic()


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
