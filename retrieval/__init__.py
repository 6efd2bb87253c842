"""Retrieval: chunking in language-model tokens, embeddings, a persisted FAISS index, and the
SQLite store of documents and chunks. Knows nothing of KV caches."""

from retrieval.chunking import Chunk, Chunker
from retrieval.embedding import Embedder, default_model_path
from retrieval.errors import (
    DocumentNotFound,
    EmbeddingModelNotFound,
    InvalidDocument,
    InvalidQuery,
    RetrievalError,
    ServiceClosed,
    UnsupportedFileType,
)
from retrieval.extraction import extract_text, supported_suffixes
from retrieval.records import ChunkRecord, DocumentRecord, SearchHit, content_hash
from retrieval.service import RetrievalService

__all__ = [
    "Chunk",
    "ChunkRecord",
    "Chunker",
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
    "UnsupportedFileType",
    "content_hash",
    "default_model_path",
    "extract_text",
    "supported_suffixes",
]
