"""The FAISS index: exact inner product for small collections, HNSW beyond a threshold.

Vectors are unit length, so inner product is cosine similarity. Ids are the chunk ids of the
store. A flat index removes ids in place. HNSW cannot remove ids, so removed ids become
tombstones, skipped at query time by a FAISS id selector (results stay exact in number),
and the owner rebuilds the index from the store once `tombstone_share` grows large.
"""

from __future__ import annotations

from typing import Literal

import faiss
import numpy as np

IndexKind = Literal["flat", "hnsw"]

HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 96


def gpu_available() -> bool:
    """Whether this faiss build has GPU support and sees a GPU."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


class VectorIndex:
    """One FAISS index over (int64 id, float32 unit vector) pairs. Not thread-safe: the owner
    serialises mutations against searches.

    With `use_gpu`, a flat index is searched through a GPU copy, refreshed after mutations;
    the CPU index stays the one that is mutated and saved. HNSW always runs on the CPU.
    """

    def __init__(self, dimension: int, kind: IndexKind = "flat", use_gpu: bool = False) -> None:
        self.dimension = dimension
        self.kind: IndexKind = kind
        if kind == "flat":
            inner = faiss.IndexFlatIP(dimension)
        else:
            inner = faiss.IndexHNSWFlat(dimension, HNSW_M, faiss.METRIC_INNER_PRODUCT)
            inner.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        self._index = faiss.IndexIDMap2(inner)
        self._tombstones: set[int] = set()
        self._selector: faiss.IDSelector | None = None
        # IDSelectorNot does not own the selector it wraps; this reference keeps it alive.
        self._selector_batch: faiss.IDSelector | None = None
        self._use_gpu = use_gpu and kind == "flat" and gpu_available()
        self._gpu_resources = faiss.StandardGpuResources() if self._use_gpu else None
        self._gpu_index: faiss.Index | None = None

    @classmethod
    def from_bytes(cls, data: np.ndarray, use_gpu: bool = False) -> VectorIndex:
        """Load an index written by `to_bytes`.

        Raises ValueError for bytes FAISS cannot read, TypeError for another kind of index.
        """
        try:
            loaded = faiss.deserialize_index(data)
        except RuntimeError as error:
            raise ValueError(f"unreadable FAISS index: {error}") from error
        if not isinstance(loaded, faiss.IndexIDMap2):
            raise TypeError(f"unexpected FAISS index type {type(loaded).__name__}")
        inner = faiss.downcast_index(loaded.index)
        kind: IndexKind = "hnsw" if isinstance(inner, faiss.IndexHNSWFlat) else "flat"
        index = cls(loaded.d, kind, use_gpu)
        index._index = loaded
        return index

    def to_bytes(self) -> np.ndarray:
        """Serialise the CPU index (tombstoned ids included; the store knows they are gone)."""
        return faiss.serialize_index(self._index)

    @property
    def ntotal(self) -> int:
        """Vectors held, tombstones included."""
        return int(self._index.ntotal)

    @property
    def live_count(self) -> int:
        """Vectors that searches can return."""
        return self.ntotal - len(self._tombstones)

    @property
    def tombstone_share(self) -> float:
        """Share of held vectors that are removed but still occupy the HNSW graph."""
        return len(self._tombstones) / self.ntotal if self.ntotal else 0.0

    def ids(self) -> np.ndarray:
        """All ids held, tombstones included, in insertion order."""
        return faiss.vector_to_array(self._index.id_map).astype(np.int64, copy=False)

    def live_ids(self) -> np.ndarray:
        """The ids searches can return (tombstones left out), in insertion order."""
        ids = self.ids()
        if not self._tombstones:
            return ids
        return ids[~np.isin(ids, np.fromiter(self._tombstones, dtype=np.int64))]

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add unit vectors (n, dimension) under int64 ids that are not in the index."""
        if len(ids) == 0:
            return
        self._index.add_with_ids(
            np.ascontiguousarray(vectors, dtype=np.float32), np.asarray(ids, dtype=np.int64)
        )
        self._gpu_index = None

    def remove(self, ids: np.ndarray) -> None:
        """Make `ids` unsearchable: removed from a flat index, tombstoned in HNSW."""
        if len(ids) == 0:
            return
        if self.kind == "flat":
            self._index.remove_ids(np.asarray(ids, dtype=np.int64))
            self._gpu_index = None
        else:
            self._tombstones.update(int(i) for i in ids)
            self._selector = None

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-`k` (scores, ids) per query row, best first; short rows are padded with id -1."""
        k = max(1, min(k, self.live_count))
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if self.kind == "hnsw":
            params = faiss.SearchParametersHNSW(efSearch=max(HNSW_EF_SEARCH, k))
            if self._tombstones:
                params.sel = self._tombstone_selector()
            return self._index.search(queries, k, params=params)
        if self._use_gpu:
            if self._gpu_index is None:
                self._gpu_index = faiss.index_cpu_to_gpu(self._gpu_resources, 0, self._index)
            return self._gpu_index.search(queries, k)
        return self._index.search(queries, k)

    def _tombstone_selector(self) -> faiss.IDSelector:
        if self._selector is None:
            self._selector_batch = faiss.IDSelectorBatch(
                np.fromiter(self._tombstones, dtype=np.int64)
            )
            self._selector = faiss.IDSelectorNot(self._selector_batch)
        return self._selector
