"""Shared hot tier in Redis: one hash per chunk, a `header` field and one field per layer
(the parts of `kvstore/redis_layout.py`)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import redis
import torch
from redis.backoff import NoBackoff
from redis.retry import Retry

from kvstore.errors import CorruptEntry, KVStoreError, TierFull, TierUnavailable
from kvstore.keys import StoreKey
from kvstore.redis_layout import (
    HEADER_PART,
    from_parts,
    header_from_part,
    layer_from_part,
    layer_part,
    to_parts,
)
from kvstore.stored_format import Header, StoredDocument
from kvstore.tier import Tier

T = TypeVar("T")

DEFAULT_TTL_S = 7 * 24 * 3600


class RedisTier(Tier):
    """Stored documents in Redis hashes, so one layer is one HMGET away.

    Each hash is written in one MULTI/EXEC (delete, HSET every field, EXPIRE), so readers never
    see a half-written copy, and every write sets the TTL. Timeouts are short and there are no
    client-side retries: a slow or absent Redis must cost a request milliseconds, not seconds;
    after a failure the tier reports itself unavailable for `retry_after_s` without trying.
    """

    name = "redis"

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "samkv:kv:",
        ttl_s: int = DEFAULT_TTL_S,
        connect_timeout_s: float = 0.5,
        op_timeout_s: float = 1.0,
        retry_after_s: float = 2.0,
        client: redis.Redis | None = None,
    ) -> None:
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive: every Redis write carries a TTL")
        self.prefix = prefix
        self.ttl_s = ttl_s
        self.retry_after_s = retry_after_s
        self._client = client or redis.Redis.from_url(
            url,
            socket_connect_timeout=connect_timeout_s,
            socket_timeout=op_timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
        self._down_until = 0.0
        self._lock = threading.Lock()

    def redis_key(self, key: StoreKey) -> str:
        """The Redis hash holding `key`."""
        return f"{self.prefix}{key}"

    def _call(self, op: Callable[[], T]) -> T:
        if time.monotonic() < self._down_until:
            raise TierUnavailable("Redis marked unavailable after a recent failure")
        try:
            return op()
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            with self._lock:
                self._down_until = time.monotonic() + self.retry_after_s
            raise TierUnavailable(f"Redis unavailable: {exc}") from exc
        except redis.ResponseError as exc:
            # Inside MULTI an OOM surfaces as OutOfMemoryError or as EXECABORT naming OOM.
            if isinstance(exc, redis.exceptions.OutOfMemoryError) or "OOM" in str(exc):
                raise TierFull(f"Redis is at maxmemory: {exc}") from exc
            if "WRONGTYPE" in str(exc):
                raise CorruptEntry(f"Redis key holds another type: {exc}") from exc
            raise TierUnavailable(f"Redis refused the command: {exc}") from exc

    def get(self, key: StoreKey) -> StoredDocument | None:
        fields = self._call(lambda: self._client.hgetall(self.redis_key(key)))
        if not fields:
            return None
        parts = {name.decode(): value for name, value in fields.items()}
        return from_parts(parts, key.fingerprint_hash)

    def put(self, key: StoreKey, stored: StoredDocument) -> None:
        """Write the whole hash atomically; `TierFull` when Redis is at maxmemory."""
        name = self.redis_key(key)
        parts = to_parts(stored)

        def write() -> None:
            pipe = self._client.pipeline(transaction=True)
            pipe.delete(name)
            pipe.hset(name, mapping=parts)
            pipe.expire(name, self.ttl_s)
            pipe.execute()

        self._call(write)

    def delete(self, key: StoreKey) -> bool:
        return bool(self._call(lambda: self._client.delete(self.redis_key(key))))

    def contains(self, key: StoreKey) -> bool:
        return bool(self._call(lambda: self._client.exists(self.redis_key(key))))

    def read_header(self, key: StoreKey) -> tuple[Header, torch.Tensor] | None:
        part = self._call(lambda: self._client.hget(self.redis_key(key), HEADER_PART))
        if part is None:
            return None
        header, token_ids = header_from_part(part)
        header.check_fingerprint(key.fingerprint_hash)
        return header, token_ids

    def read_layer(
        self, key: StoreKey, layer: int
    ) -> tuple[Header, dict[str, torch.Tensor]] | None:
        head, part = self.read_parts(key, layer)
        if head is None:
            return None
        header, _ = header_from_part(head)
        header.check_fingerprint(key.fingerprint_hash)
        return header, layer_from_part(header, layer, part)

    def open_reader(self, key: StoreKey) -> RedisReader | None:
        name = self.redis_key(key)
        head = self._call(lambda: self._client.hget(name, HEADER_PART))
        if head is None:
            return None
        header, token_ids = header_from_part(head)
        header.check_fingerprint(key.fingerprint_hash)
        return RedisReader(self, key, head, header, token_ids)

    def prefetch_layer(self, readers: Sequence[RedisReader], layer: int) -> bool:
        """Fetch layer `layer` of every reader's copy in one round trip; each reader then parses
        and verifies its own part when it reads the layer. Always takes the hint (True).

        A failure here is left for each reader's own read to meet and report, document by
        document, as it would without the prefetch.
        """

        def fetch() -> list:
            pipe = self._client.pipeline(transaction=False)
            for reader in readers:
                pipe.hmget(self.redis_key(reader.key), [HEADER_PART, layer_part(layer)])
            return pipe.execute(raise_on_error=False)

        try:
            replies = self._call(fetch)
        except KVStoreError:
            return True
        for reader, reply in zip(readers, replies):
            if not isinstance(reply, Exception):
                reader.stash(layer, *reply)
        return True

    def read_parts(self, key: StoreKey, layer: int) -> tuple[bytes | None, bytes | None]:
        """The raw header and layer parts, from one HMGET (so both come from the same write)."""
        name = self.redis_key(key)
        head, part = self._call(lambda: self._client.hmget(name, [HEADER_PART, layer_part(layer)]))
        return head, part

    def close(self) -> None:
        """Release the connection pool."""
        self._client.close()


class RedisReader:
    """A Redis copy read layer by layer; each layer travels with the header it must match.

    The header is parsed again only when its bytes changed (the copy was rewritten meanwhile).
    """

    def __init__(
        self, tier: RedisTier, key: StoreKey, head: bytes, header: Header, token_ids: torch.Tensor
    ) -> None:
        self.key = key
        self._tier = tier
        self._head = head
        self._stashed: tuple[int, bytes | None, bytes | None] | None = None
        self.header = header
        self.token_ids = token_ids

    def stash(self, layer: int, head: bytes | None, part: bytes | None) -> None:
        """Keep parts fetched by `RedisTier.prefetch_layer` for the next read of `layer`."""
        self._stashed = (layer, head, part)

    def read_layer(self, layer: int) -> tuple[Header, dict[str, torch.Tensor]] | None:
        stashed, self._stashed = self._stashed, None
        if stashed is not None and stashed[0] == layer:
            _, head, part = stashed
        else:
            head, part = self._tier.read_parts(self.key, layer)
        if head is None:
            return None
        if head != self._head:
            header, _ = header_from_part(head)
            header.check_fingerprint(self.key.fingerprint_hash)
            self._head, self.header = head, header
        return self.header, layer_from_part(self.header, layer, part)

    def close(self) -> None:
        """Drop a prefetched layer not read; connections belong to the tier's pool."""
        self._stashed = None
