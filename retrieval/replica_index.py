"""This replica's FAISS index: a local cache of the shared chunk table, kept current by
applying the table's change log in version order.

The index file under the data dir records the change version it reflects. On open, the
file is loaded and the changes made since its version are applied; a missing, damaged,
foreign (ahead of the database) or inconsistent file is rebuilt from the table instead.
Applying is idempotent: a chunk already held is not added again, so replaying changes the
index already reflects (after a rebuild, or a crash before the file was saved) is harmless.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import numpy as np

from retrieval.index_file import read_index_file, write_index_file
from retrieval.store import ADD, REBUILD, REMOVE, ChangeBatch, DocumentStore
from retrieval.vector_index import VectorIndex

logger = logging.getLogger(__name__)

# HNSW keeps removed vectors as tombstones; past this share the graph is rebuilt.
MAX_TOMBSTONE_SHARE = 0.2


class ReplicaIndex:
    """The index of one replica. Thread-safe: `sync` and saving are serialised, and a search
    never sees an index half-way through a change."""

    def __init__(
        self,
        store: DocumentStore,
        path: Path,
        dimension: int,
        hnsw_threshold: int,
        use_gpu: bool,
        save_interval_s: float,
    ) -> None:
        self._store = store
        self._path = path
        self._dimension = dimension
        self._hnsw_threshold = hnsw_threshold
        self._use_gpu = use_gpu
        self._save_interval_s = save_interval_s
        self._sync_lock = threading.Lock()
        self._index_lock = threading.Lock()
        self._index = VectorIndex(dimension, "flat", use_gpu)
        self._version = 0
        self._dirty = False
        self._last_save = time.monotonic()

    @property
    def version(self) -> int:
        """The change version the index reflects."""
        return self._version

    @property
    def kind(self) -> str:
        """flat or hnsw."""
        return self._index.kind

    @property
    def live_count(self) -> int:
        """Chunks a search can return."""
        with self._index_lock:
            return self._index.live_count

    def ids(self) -> np.ndarray:
        """Ids of the chunks a search can return, ascending."""
        with self._index_lock:
            return np.sort(self._index.live_ids())

    def open(self, force_rebuild: bool = False) -> None:
        """Load the saved index and catch up with the table, or rebuild it from the table."""
        with self._sync_lock:
            problem = "built for another embedding model" if force_rebuild else self._load()
            if problem is None:
                self._apply(self._store.changes_since(self._version))
                problem = self._mismatch()
            if problem is not None:
                if problem != "missing" or self._store.count_chunks():
                    logger.warning("index %s is %s; rebuilding it from the store", self._path,
                                   problem)
                self._rebuild()
            else:
                logger.info("loaded index %s (%d chunks, version %d)", self._path,
                            self._index.live_count, self._version)
            self._save()

    def sync(self) -> int:
        """Apply the changes committed since the last sync; how many there were."""
        with self._sync_lock:
            batch = self._store.changes_since(self._version)
            self._apply(batch)
            if self._dirty and time.monotonic() - self._last_save >= self._save_interval_s:
                self._save()
            return len(batch.changes)

    def search(self, vector: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Top-`k` (scores, ids) for one query row; None when the index is empty."""
        with self._index_lock:
            if self._index.live_count == 0:
                return None
            return self._index.search(vector, k)

    def save(self) -> None:
        """Write the index file now."""
        with self._sync_lock:
            self._save()

    def close(self) -> None:
        """Save the index if it has unsaved changes."""
        with self._sync_lock:
            if self._dirty:
                self._save()

    def _load(self) -> str | None:
        """Load the saved index; what is wrong with it, or None."""
        if not self._path.exists():
            return "missing"
        try:
            stored = read_index_file(self._path)
            index = VectorIndex.from_bytes(stored.data, self._use_gpu)
        except (OSError, ValueError, TypeError) as error:
            return f"unreadable ({error})"
        if index.dimension != self._dimension:
            return f"of dimension {index.dimension}, not {self._dimension}"
        if stored.version > self._store.current_version():
            return f"at version {stored.version}, ahead of the database (another database?)"
        with self._index_lock:
            self._index = index
        self._version = stored.version
        return None

    def _mismatch(self) -> str | None:
        """How the caught-up index differs from the table, or None."""
        stored = self._store.chunk_ids()
        held = self._index.live_ids()
        if len(held) != len(np.unique(held)):
            return "holding duplicate ids"
        missing = np.setdiff1d(stored, held, assume_unique=True)
        if len(missing):
            return f"stale ({len(missing)} stored chunks are not in it)"
        extra = np.setdiff1d(held, stored, assume_unique=True)
        if len(extra):
            # HNSW tombstones are not saved with the graph, so there they are expected.
            logger.log(
                logging.INFO if self._index.kind == "hnsw" else logging.WARNING,
                "index %s holds %d chunks deleted since they were indexed; removing them",
                self._path, len(extra),
            )
            with self._index_lock:
                self._index.remove(extra)
            self._dirty = True
        return None

    def _apply(self, batch: ChangeBatch) -> None:
        if batch.version == self._version:
            return
        added: dict[int, None] = {}
        removed: set[int] = set()
        for kind, chunk_id in batch.changes:
            if kind == REBUILD:
                logger.info("the table asks for a rebuild (version %d)", batch.version)
                self._rebuild()
                return
            if kind == ADD:
                added[chunk_id] = None
            elif kind == REMOVE:
                added.pop(chunk_id, None)
                removed.add(chunk_id)
        held = set(self._index.ids().tolist())
        to_add = [i for i in added if i not in held]
        ids, vectors = self._store.vectors_of(to_add) if to_add else (np.empty(0), None)
        with self._index_lock:
            self._index.remove(np.array([i for i in removed if i in held], dtype=np.int64))
            if len(ids):
                self._index.add(ids, vectors)
        self._version = batch.version
        self._dirty = True
        self._reshape()

    def _reshape(self) -> None:
        """Switch index kind or drop tombstones when due."""
        live = self._index.live_count
        if self._index.kind == "flat" and live > self._hnsw_threshold:
            logger.info("%d chunks exceed the HNSW threshold", live)
            self._rebuild()
        elif self._index.kind == "hnsw" and self._index.tombstone_share > MAX_TOMBSTONE_SHARE:
            logger.info("%.0f%% of the HNSW index are deleted chunks", 100 * self._index.tombstone_share)
            self._rebuild()

    def _rebuild(self) -> None:
        """Build a new index from the table, searches using the old one meanwhile."""
        version = self._store.current_version()
        kind = "hnsw" if self._store.count_chunks() > self._hnsw_threshold else "flat"
        index = VectorIndex(self._dimension, kind, self._use_gpu)
        for ids, vectors in self._store.vectors():
            index.add(ids, vectors)
        logger.info("built a %s index of %d chunks (version %d)", kind, index.ntotal, version)
        with self._index_lock:
            self._index = index
        self._version = version
        self._dirty = True
        # Changes committed while the table was read: applying them again is harmless.
        self._apply(self._store.changes_since(version))

    def _save(self) -> None:
        write_index_file(self._path, self._index.to_bytes(), self._version)
        self._dirty = False
        self._last_save = time.monotonic()
