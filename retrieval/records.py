"""The immutable records the retrieval service hands out."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

INDEXED = "indexed"


def content_hash(text: str) -> str:
    """Return the sha256 hex digest of `text` (UTF-8); the KV store keys caches by it."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ChunkRecord:
    """One stored chunk. `id` is stable for the chunk's lifetime and is also its FAISS id."""

    id: int
    document_id: str
    position: int
    text: str
    token_count: int
    content_hash: str


@dataclass(frozen=True)
class DocumentRecord:
    """One stored document.

    `text` and `chunks` are None in the summaries returned by `list_documents`, which would
    otherwise load every stored text at once.
    """

    id: str
    metadata: dict[str, Any]
    state: str
    created_at: datetime
    updated_at: datetime
    chunk_count: int
    text: str | None = None
    chunks: tuple[ChunkRecord, ...] | None = None


@dataclass(frozen=True)
class SearchHit:
    """One search result; `score` is the cosine similarity of query and chunk."""

    document_id: str
    chunk_id: int
    score: float
    text: str
    position: int
    content_hash: str
