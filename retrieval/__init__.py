"""Retrieval: chunking in language-model tokens, embeddings, a per-replica FAISS index, and the
shared store of documents and chunks (SQLite or PostgreSQL). Knows nothing of KV caches."""

from retrieval.chunking import Chunk, Chunker
from retrieval.database import Database
from retrieval.embedding import Embedder, default_model_path
from retrieval.errors import (
    DocumentNotFound,
    EmbeddingModelNotFound,
    InvalidDocument,
    InvalidQuery,
    RetrievalError,
    ServiceClosed,
    StoreUnavailable,
    UnsupportedFileType,
)
from retrieval.extraction import extract_text, supported_suffixes
from retrieval.records import ChunkRecord, DocumentRecord, SearchHit, content_hash
from retrieval.service import RetrievalService

__all__ = [
    "Chunk",
    "ChunkRecord",
    "Chunker",
    "Database",
    "DocumentNotFound",
    "DocumentRecord",
    "Embedder",
    "EmbeddingModelNotFound",
    "InvalidDocument",
    "InvalidQuery",
    "RetrievalError",
    "RetrievalService",
    "SearchHit",
    "ServiceClosed",
    "StoreUnavailable",
    "UnsupportedFileType",
    "content_hash",
    "default_model_path",
    "extract_text",
    "supported_suffixes",
]
