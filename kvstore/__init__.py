"""The KV store: each chunk's document KV cache, stored once per model and read layer by layer.

store = open_store(data_dir, fingerprint, engine.encode_document, redis_url=...)
store.put(text, doc) / store.get(text) / store.delete(text)
source = store.source(retrieved_texts)      # a samkv DocumentSource, one DocumentReader a text
store.drop_page_cache()                     # a cold disk tier for the next reads
Precomputer(store).submit(chunk_texts)      # ingestion-time encoding, pollable progress
"""

from kvstore.disk import DiskTier
from kvstore.disk_layout import deserialize, serialize
from kvstore.document_reader import DocumentReader, StoreSource
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
from kvstore.store import TieredStore, open_store
from kvstore.stored_format import LAYOUT_VERSION, StorageFormat, StoredDocument
from kvstore.tier import LayerReader, Tier

__all__ = [
    "LAYOUT_VERSION",
    "CorruptEntry",
    "DiskTier",
    "DocumentNotFound",
    "DocumentReader",
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
