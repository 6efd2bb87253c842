"""`TieredStore`: memory → Redis → disk → re-encode, with back-fill and repair.

The store's policy (how a tier read is tried, when a copy is discarded, repaired or back-filled)
is public so that `DocumentReader` (`kvstore/document_reader.py`), which reads one document of a
request layer by layer, applies the same policy as whole-document reads.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from prometheus_client import CollectorRegistry

from kvstore.codec import decode, encode
from kvstore.disk import DiskTier
from kvstore.document_reader import DocumentReader, StoreSource
from kvstore.errors import (
    CorruptEntry,
    DocumentNotFound,
    EncoderMismatch,
    FingerprintMismatch,
    StoreWriteError,
    TierFull,
    TierUnavailable,
)
from kvstore.keys import StoreKey, fingerprint_hash, make_key
from kvstore.memory import MemoryTier
from kvstore.metrics import StoreMetrics
from kvstore.redis_tier import DEFAULT_TTL_S, RedisTier
from kvstore.stored_format import DEFAULT_FORMAT, StorageFormat, StoredDocument
from kvstore.tier import Tier
from samkv.document import DocumentKV

logger = logging.getLogger(__name__)

Encoder = Callable[[str], DocumentKV]
T = TypeVar("T")
Item = StoreKey | str  # a key, or the chunk text itself (which also allows re-encoding)

_LOCK_STRIPES = 64


class _RateLimitedWarnings:
    """At most one warning per topic per interval, saying how many were suppressed meanwhile."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._lock = threading.Lock()

    def warn(self, topic: str, message: str) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(topic, -self.interval_s) < self.interval_s:
                self._suppressed[topic] = self._suppressed.get(topic, 0) + 1
                return
            self._last[topic] = now
            suppressed = self._suppressed.pop(topic, 0)
        more = f" ({suppressed} similar warnings suppressed)" if suppressed else ""
        logger.warning("%s%s", message, more)


class TieredStore:
    """Stored document caches for one model, over tiers listed fastest first.

    Reads try each tier in turn and back-fill the faster tiers they missed; a document no tier
    holds is re-encoded when its text is known. Writes go to the last (durable) tier first, whose
    failure raises `StoreWriteError`; the faster tiers are best effort. An unreachable tier is
    skipped with a rate-limited warning and a metric; a copy that fails its checks is deleted
    from its tier and never served. Safe to use from several threads.
    """

    def __init__(
        self,
        fingerprint: str,
        tiers: Sequence[Tier],
        *,
        encode: Encoder | None = None,
        storage_format: StorageFormat = DEFAULT_FORMAT,
        registry: CollectorRegistry | None = None,
        warn_interval_s: float = 30.0,
    ) -> None:
        if not tiers:
            raise ValueError("a TieredStore needs at least one tier")
        self.fingerprint = fingerprint
        self.tiers = list(tiers)
        self.storage_format = storage_format
        self.metrics = StoreMetrics(registry)
        self._encoder = encode
        self._fingerprint_hash = fingerprint_hash(fingerprint)
        self._warnings = _RateLimitedWarnings(warn_interval_s)
        # Serialises writers, deletes and repairs of one key; readers never wait on it.
        self._locks = [threading.RLock() for _ in range(_LOCK_STRIPES)]
        # Back-fills compare it before and after their read so they never resurrect a deleted key.
        self._deletes = 0
        self._deletes_lock = threading.Lock()

    @property
    def durable_tier(self) -> Tier:
        """The last tier, which every write must reach."""
        return self.tiers[-1]

    @property
    def fingerprint_hash(self) -> str:
        """sha256 hex of the model fingerprint, as every key of this store carries it."""
        return self._fingerprint_hash

    @property
    def deletes(self) -> int:
        """How many deletes the store has begun: a back-fill passes the count it saw before its
        read, so that it never resurrects a key deleted meanwhile."""
        return self._deletes

    def key(self, text: str) -> StoreKey:
        """The key of chunk `text` for this store's model."""
        return make_key(self.fingerprint, text)

    def close(self) -> None:
        """Release the tiers' connections (the Redis pool); the store is unusable afterwards."""
        for tier in self.tiers:
            tier.close()

    def drop_page_cache(self) -> int:
        """Evict the disk tier's files from the OS page cache (a cold disk tier for the next
        reads); the number of files advised, 0 without a disk tier."""
        return sum(tier.drop_page_cache() for tier in self.tiers)

    def stats(self) -> dict[str, dict[str, float]]:
        """Hits, misses, bytes read, load time per tier, discards, write rejections, encode rate."""
        return self.metrics.stats()

    # --- reads -------------------------------------------------------------------------------

    def get(self, item: Item) -> DocumentKV:
        """The whole cache of `item` (a key or the chunk text), in the storage dtype.

        Raises `DocumentNotFound` when no tier holds a valid copy and the text is not known.
        """
        key, text = self._resolve(item)
        deletes = self._deletes
        for i, tier in enumerate(self.tiers):
            start = time.perf_counter()
            stored = self.read_tier(tier, key, lambda t=tier: t.get(key))
            if stored is None:
                continue
            self.metrics.hit(tier.name, stored.nbytes, time.perf_counter() - start, "full")
            self.backfill(key, stored, self.tiers[:i], deletes)
            return decode(stored)
        return decode(self.repair(key, text))

    def contains(self, item: Item) -> bool:
        """Whether any reachable tier holds a copy (not verified: reads check)."""
        key, _ = self._resolve(item)
        for tier in self.tiers:
            try:
                if tier.contains(key):
                    return True
            except TierUnavailable as exc:
                self._unavailable(tier, exc)
        return False

    def has_durable_copy(self, item: Item) -> bool:
        """Whether the durable tier holds a copy whose header checks out."""
        key, _ = self._resolve(item)
        tier = self.durable_tier
        return self.read_tier(tier, key, lambda: tier.read_header(key), count=False) is not None

    def source(self, items: Sequence[Item], *, backfill: bool = True) -> StoreSource:
        """A `DocumentSource` over `items` (keys or chunk texts) in prompt order.

        Every document is located (or re-encoded) now, at the fastest tier holding a valid
        header, so no document can turn out missing mid-request; only headers and token ids are
        read here. Layers are then read one at a time from that tier, falling through to slower
        tiers (and re-encoding, where the text is known) if it fails meanwhile. With `backfill`,
        a document read from a slower tier is copied to the faster ones once all its layers have
        been read.
        """
        readers = [DocumentReader(self, *self._resolve(item), backfill=backfill) for item in items]
        return StoreSource(self, readers)

    # --- writes ------------------------------------------------------------------------------

    def put(self, item: Item, doc: DocumentKV) -> StoreKey:
        """Store `doc` under `item`'s key: durable tier first (raising `StoreWriteError`), then the rest."""
        key, _ = self._resolve(item)
        if doc.fingerprint != self.fingerprint:
            raise EncoderMismatch(
                f"cache made by model fingerprint {doc.fingerprint!r}, store is for {self.fingerprint!r}"
            )
        self._write(key, encode(doc, self.storage_format))
        return key

    def copy_to_durable(self, item: Item) -> bool:
        """Write a faster tier's valid copy of `item` to the durable tier; whether it did.

        A replica that joins with an empty disk finds the caches other replicas stored in
        the shared Redis tier: copying one costs a read, encoding it again a prefill. False
        when no faster tier holds a valid copy, the key was deleted during the read, or the
        durable tier refused the write (the caller then encodes as before).
        """
        key, _ = self._resolve(item)
        deletes = self._deletes
        for tier in self.tiers[:-1]:
            stored = self.read_tier(tier, key, lambda t=tier: t.get(key), count=False)
            if stored is not None:
                return self.backfill(key, stored, [self.durable_tier], deletes)
        return False

    def delete(self, item: Item) -> None:
        """Remove `item`'s cache from every tier (a tier that is down keeps its copy until its TTL)."""
        key, _ = self._resolve(item)
        with self._lock(key):
            with self._deletes_lock:
                self._deletes += 1
            for tier in self.tiers:
                try:
                    tier.delete(key)
                except TierUnavailable as exc:
                    self._unavailable(tier, exc)

    def encode_text(self, text: str) -> DocumentKV:
        """Encode one chunk with the store's encoder, checking its fingerprint and timing it."""
        if self._encoder is None:
            raise DocumentNotFound("this store has no encoder to compute missing caches with")
        start = time.perf_counter()
        doc = self._encoder(text)
        self.metrics.encoded(1, doc.length, time.perf_counter() - start)
        return doc

    # --- policy, shared with `DocumentReader` -------------------------------------------------

    def read_tier(
        self, tier: Tier, key: StoreKey, read: Callable[[], T], *, count: bool = True
    ) -> T | None:
        """Run one read of `key` on `tier`: None for a miss (counted unless `count` is False), an
        unreachable tier (warned and counted), or a copy that failed its checks (discarded)."""
        try:
            found = read()
        except TierUnavailable as exc:
            self._unavailable(tier, exc)
            return None
        except CorruptEntry as exc:
            self.discard(tier, key, exc)
            return None
        if found is None and count:
            self.metrics.miss(tier.name)
        return found

    def discard(self, tier: Tier, key: StoreKey, exc: CorruptEntry) -> None:
        """Delete `tier`'s copy of `key`, which failed a check (`exc`); counted and warned."""
        reason = "fingerprint" if isinstance(exc, FingerprintMismatch) else "corrupt"
        self.metrics.discarded(tier.name, reason)
        self._warnings.warn(
            f"discard:{tier.name}",
            f"discarding {reason} KV copy {key.content_hash[:12]} in {tier.name}: {exc}",
        )
        try:
            tier.delete(key)
        except TierUnavailable as delete_exc:
            self._unavailable(tier, delete_exc)

    def backfill(
        self, key: StoreKey, stored: StoredDocument, tiers: Sequence[Tier], deletes: int
    ) -> bool:
        """Copy `stored`, read from another tier, to `tiers` (best effort), unless the key was
        deleted since `deletes` (`TieredStore.deletes` before the read); whether every one of
        `tiers` took it."""
        if not tiers:
            return True
        with self._lock(key):
            if self._deletes != deletes:
                return False
            # Every tier is written, even after one refused the copy.
            written = [self._put_best_effort(tier, key, stored) for tier in reversed(tiers)]
            return all(written)

    def repair(self, key: StoreKey, text: str | None) -> StoredDocument:
        """Encode a document no tier could serve, and write it everywhere; `DocumentNotFound`
        without its text or an encoder. A failed write is logged: the copy is still returned."""
        if text is None or self._encoder is None:
            what = "no chunk text was given" if text is None else "the store has no encoder"
            raise DocumentNotFound(
                f"no valid KV cache for {key.content_hash[:12]} in any tier and {what}"
            )
        with self._lock(key):
            # Another thread may have repaired it while this one waited for the lock.
            for tier in self.tiers:
                stored = self.read_tier(tier, key, lambda t=tier: t.get(key), count=False)
                if stored is not None:
                    return stored
            doc = self.encode_text(text)
            if doc.fingerprint != self.fingerprint:
                raise EncoderMismatch(
                    f"encoder made fingerprint {doc.fingerprint!r}, store is for {self.fingerprint!r}"
                )
            stored = encode(doc, self.storage_format)
            try:
                self._write(key, stored)
            except StoreWriteError as exc:
                # The caller can still be served from this copy; the next read re-encodes again.
                logger.error(
                    "re-encoded KV cache %s could not be stored: %s", key.content_hash[:12], exc
                )
            return stored

    # --- internals ---------------------------------------------------------------------------

    def _resolve(self, item: Item) -> tuple[StoreKey, str | None]:
        if isinstance(item, StoreKey):
            if item.fingerprint_hash != self._fingerprint_hash:
                raise EncoderMismatch(f"key {item} belongs to another model than this store's")
            return item, None
        return self.key(item), item

    def _lock(self, key: StoreKey) -> threading.RLock:
        return self._locks[int(key.content_hash[:8], 16) % _LOCK_STRIPES]

    def _unavailable(self, tier: Tier, exc: Exception) -> None:
        self.metrics.unavailable(tier.name)
        self._warnings.warn(
            f"unavailable:{tier.name}", f"KV tier {tier.name} unavailable, skipping it: {exc}"
        )

    def _put_best_effort(self, tier: Tier, key: StoreKey, stored: StoredDocument) -> bool:
        """Write `stored` to `tier`; a full or unreachable tier is counted and warned of, and
        the result is False."""
        try:
            tier.put(key, stored)
        except TierFull as exc:
            self.metrics.write_rejected(tier.name, "full")
            self._warnings.warn(
                f"full:{tier.name}", f"KV tier {tier.name} is full, not caching there: {exc}"
            )
        except TierUnavailable as exc:
            self.metrics.write_rejected(tier.name, "unavailable")
            self._unavailable(tier, exc)
        else:
            self.metrics.written(tier.name)
            return True
        return False

    def _write(self, key: StoreKey, stored: StoredDocument) -> None:
        durable, faster = self.durable_tier, self.tiers[:-1]
        with self._lock(key):
            try:
                durable.put(key, stored)
            except (TierFull, TierUnavailable) as exc:
                raise StoreWriteError(
                    f"durable KV tier {durable.name} refused the write: {exc}"
                ) from exc
            self.metrics.written(durable.name)
            for tier in reversed(faster):
                self._put_best_effort(tier, key, stored)


DEFAULT_MEMORY_BYTES = 512 * 2**20


def open_store(
    data_dir: Path,
    fingerprint: str,
    encode: Encoder | None,
    redis_url: str = "",
    memory_bytes: int = DEFAULT_MEMORY_BYTES,
    storage_dtype: str = "float16",
    redis_ttl_s: int = DEFAULT_TTL_S,
    registry: CollectorRegistry | None = None,
    *,
    quantization: str = "none",
    redis_prefix: str = "samkv:kv:",
) -> TieredStore:
    """The store the app uses: memory LRU → Redis (when `redis_url` is set) → disk under `data_dir/kv`.

    `storage_dtype` is float16 or bfloat16, or "int8" for float16 with int8 keys and values
    (the same as `quantization="int8"`), so that one setting can name any of the three.
    """
    tiers: list[Tier] = [MemoryTier(memory_bytes)]
    if redis_url:
        tiers.append(RedisTier(redis_url, prefix=redis_prefix, ttl_s=redis_ttl_s))
    tiers.append(DiskTier(Path(data_dir)))
    if storage_dtype == "int8":
        storage_dtype, quantization = "float16", "int8"
    fmt = StorageFormat(storage_dtype, quantization)  # type: ignore[arg-type]
    return TieredStore(fingerprint, tiers, encode=encode, storage_format=fmt, registry=registry)
