"""The start-up check that the KV files agree with the document store, and their repair.

The retrieval service checks its FAISS index against its SQLite store when it opens (and
rebuilds a missing, damaged or stale index from it); the job table marks jobs a crash
interrupted as failed. What is left is the KV store: a crash between indexing a document and
storing its chunks' caches leaves chunks without a durable cache, and a crash between
deleting a document and deleting its caches leaves caches nobody can reach. This check finds
both, queues the missing caches for encoding and deletes the unreachable ones, so the three
stores agree again without anyone re-submitting anything.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

from kvstore import DiskTier, PrecomputeJob, Precomputer, TieredStore
from retrieval import DocumentNotFound, RetrievalService

logger = logging.getLogger(__name__)

# A temporary KV file older than this belongs to a write that a crash interrupted; a younger
# one may be another replica's write in progress on a shared volume.
STALE_TEMP_FILE_S = 3600.0


@dataclass(frozen=True)
class ConsistencyReport:
    """What the start-up check found (and repaired)."""

    chunks: int
    """Distinct chunk texts in the document store."""
    missing_kv: int
    """Of those, chunks without a valid durable KV cache: queued for encoding."""
    orphan_kv: int
    """Durable KV caches of this model that no stored chunk has: deleted."""
    stale_temp_files: int
    """Temporary files of KV writes a crash interrupted: deleted."""

    def as_dict(self) -> dict[str, Any]:
        """The report as plain JSON-able values."""
        return asdict(self)


def check_consistency(
    retrieval: RetrievalService, store: TieredStore, precomputer: Precomputer
) -> tuple[ConsistencyReport, PrecomputeJob | None]:
    """Compare the stored chunks with the durable KV caches and repair the differences.

    Returns the report and the precompute job re-encoding the missing caches (None when
    nothing is missing). Safe while the service takes requests: files are listed before the
    store is read, so a cache written for a document ingested meanwhile is never taken for
    an orphan (its chunks are in the store before its cache is written).
    """
    disk = store.durable_tier if isinstance(store.durable_tier, DiskTier) else None
    stored_keys = disk.stored_keys(store.fingerprint_hash) if disk else set()
    texts: dict[str, str] = {}
    for document in retrieval.list_documents():
        try:
            chunks = retrieval.chunks_of(document.id)
        except DocumentNotFound:  # deleted since it was listed
            continue
        for chunk in chunks:
            texts.setdefault(chunk.content_hash, chunk.text)

    missing = [text for text in texts.values() if not store.has_durable_copy(text)]
    orphans = [key for key in stored_keys if key.content_hash not in texts]
    for key in orphans:
        store.delete(key)
    stale = disk.remove_interrupted_writes(STALE_TEMP_FILE_S) if disk else 0
    job = precomputer.submit(missing, job_id="startup-repair", timeout=None) if missing else None

    report = ConsistencyReport(len(texts), len(missing), len(orphans), stale)
    if missing or orphans or stale:
        logger.warning(
            "start-up check: %d of %d chunks lack a KV cache (re-encoding them), %d orphan "
            "caches and %d stale temporary files deleted",
            len(missing), len(texts), len(orphans), stale,
        )
    else:
        logger.info("start-up check: the KV caches of all %d chunks are in place", len(texts))
    return report, job
