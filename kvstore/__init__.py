"""The KV store: each chunk's document KV cache, stored once per model and read layer by layer.

store = open_store(data_dir, fingerprint, engine.encode_document, redis_url=...)
store.put(text, doc) / store.get(text) / store.delete(text)
source = store.source(retrieved_texts)      # a samkv DocumentSource
Precomputer(store).submit(chunk_texts)      # ingestion-time encoding, pollable progress
"""

from kvstore.disk import DiskTier
from kvstore.errors import (
    CorruptEntry,
    DocumentNotFound,
    EncoderMismatch,
    FingerprintMismatch,
    KVStoreError,
    QueueFull,
    StoreWriteError,
    TierFull,
    TierUnavailable,
)
from kvstore.keys import StoreKey, make_key
from kvstore.memory import MemoryTier
from kvstore.metrics import StoreMetrics
from kvstore.precompute import JobProgress, PrecomputeJob, Precomputer
from kvstore.redis_tier import RedisTier
from kvstore.serialization import (
    LAYOUT_VERSION,
    StorageFormat,
    StoredDocument,
    deserialize,
    serialize,
)
from kvstore.store import StoreSource, TieredStore, open_store
from kvstore.tier import LayerReader, Tier

__all__ = [
    "LAYOUT_VERSION",
    "CorruptEntry",
    "DiskTier",
    "DocumentNotFound",
    "EncoderMismatch",
    "FingerprintMismatch",
    "JobProgress",
    "KVStoreError",
    "LayerReader",
    "MemoryTier",
    "PrecomputeJob",
    "Precomputer",
    "QueueFull",
    "RedisTier",
    "StorageFormat",
    "StoreKey",
    "StoreMetrics",
    "StoreSource",
    "StoreWriteError",
    "StoredDocument",
    "Tier",
    "TierFull",
    "TierUnavailable",
    "TieredStore",
    "deserialize",
    "make_key",
    "open_store",
    "serialize",
]
