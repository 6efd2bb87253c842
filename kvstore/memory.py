"""In-process LRU tier, bounded in bytes."""

from __future__ import annotations

import threading
from collections import OrderedDict

import torch

from kvstore.keys import StoreKey
from kvstore.stored_format import Header, StoredDocument
from kvstore.tier import Tier


class MemoryTier(Tier):
    """Least-recently-used stored documents, at most `capacity_bytes` of tensors; thread-safe.

    Entries are trusted process memory, so reads skip the checksum (that would cap this tier
    at hashing speed); the fingerprint is still checked against the key. The tier keeps its own
    copy on `put` and hands out a copy on `get`, so no caller ever shares (or could modify) an
    entry; layer reads are views, read-only by the engine's contract.
    """

    name = "memory"

    def __init__(self, capacity_bytes: int) -> None:
        if capacity_bytes < 0:
            raise ValueError("capacity_bytes must be >= 0")
        self.capacity_bytes = capacity_bytes
        self._entries: OrderedDict[StoreKey, StoredDocument] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def _lookup(self, key: StoreKey) -> StoredDocument | None:
        with self._lock:
            stored = self._entries.get(key)
            if stored is not None:
                self._entries.move_to_end(key)
        if stored is not None:
            stored.header.check_fingerprint(key.fingerprint_hash)
        return stored

    def get(self, key: StoreKey) -> StoredDocument | None:
        stored = self._lookup(key)
        return None if stored is None else stored.clone()

    def put(self, key: StoreKey, stored: StoredDocument) -> None:
        size = stored.nbytes
        # A document larger than the whole tier would only evict everything else to no use.
        stored = stored.clone() if size <= self.capacity_bytes else None
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            if stored is None:
                return
            self._entries[key] = stored
            self._bytes += size
            while self._bytes > self.capacity_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= evicted.nbytes

    def delete(self, key: StoreKey) -> bool:
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
        return old is not None

    def contains(self, key: StoreKey) -> bool:
        with self._lock:
            return key in self._entries

    def read_header(self, key: StoreKey) -> tuple[Header, torch.Tensor] | None:
        stored = self._lookup(key)
        return None if stored is None else (stored.header, stored.token_ids)

    def read_layer(
        self, key: StoreKey, layer: int
    ) -> tuple[Header, dict[str, torch.Tensor]] | None:
        stored = self._lookup(key)
        return None if stored is None else (stored.header, stored.layer(layer))

    def open_reader(self, key: StoreKey) -> MemoryReader | None:
        stored = self._lookup(key)
        return None if stored is None else MemoryReader(stored)

    def clear(self) -> None:
        """Drop every entry."""
        with self._lock:
            self._entries.clear()
            self._bytes = 0


class MemoryReader:
    """An entry held for one request: still served if evicted or deleted meanwhile."""

    def __init__(self, stored: StoredDocument) -> None:
        self._stored = stored
        self.header = stored.header
        self.token_ids = stored.token_ids

    def read_layer(self, layer: int) -> tuple[Header, dict[str, torch.Tensor]]:
        return self.header, self._stored.layer(layer)

    def close(self) -> None:
        """Nothing to release: the entry is process memory."""
