"""Typed errors of the retrieval package; the HTTP layer maps each to one status code."""

from __future__ import annotations


class RetrievalError(Exception):
    """Base class of every error raised on purpose by `retrieval`."""


class UnsupportedFileType(RetrievalError):
    """The file's type (by name or content type) is not one we can extract text from."""


class InvalidDocument(RetrievalError):
    """The document cannot be ingested as given: empty text, undecodable bytes, bad metadata."""


class InvalidQuery(RetrievalError):
    """The search request is malformed: top_k below 1, filters that are not key to scalar."""


class DocumentNotFound(RetrievalError):
    """No document with the given id is stored."""


class EmbeddingModelNotFound(RetrievalError):
    """The embedding model path does not hold a local sentence-transformers model."""


class ServiceClosed(RetrievalError):
    """The retrieval service was closed; create a new one on the data directory."""


class StoreUnavailable(RetrievalError):
    """The database cannot be reached (or is busy) now; the request may be retried later."""
