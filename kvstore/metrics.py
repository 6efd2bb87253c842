"""Store metrics: Prometheus series on a registry the caller owns, and the same numbers as a dict."""

from __future__ import annotations

import threading
from collections import defaultdict

from prometheus_client import CollectorRegistry, Counter, Histogram

# Loads range from a slice of process memory (microseconds) to a full document from disk.
_LATENCY_BUCKETS = (1e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5)


class StoreMetrics:
    """Counters and histograms of one store.

    They are registered on `registry`, by default a registry of their own (not the global one),
    so several stores and tests never collide; the app exposes the registry it passes in.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self._hits = Counter("kvstore_hits", "Reads served by a tier", ["tier"], registry=r)
        self._misses = Counter("kvstore_misses", "Reads a tier did not hold", ["tier"], registry=r)
        self._bytes_read = Counter(
            "kvstore_read_bytes", "Tensor bytes read from a tier", ["tier"], registry=r
        )
        self._load_seconds = Histogram(
            "kvstore_load_seconds",
            "Time to read from a tier (kind: full document, header, one layer of one document)",
            ["tier", "kind"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self._unavailable = Counter(
            "kvstore_tier_unavailable",
            "Operations skipped because a tier was unreachable",
            ["tier"],
            registry=r,
        )
        self._discarded = Counter(
            "kvstore_discarded",
            "Stored copies discarded (reason: corrupt, fingerprint)",
            ["tier", "reason"],
            registry=r,
        )
        self._writes = Counter("kvstore_writes", "Copies written to a tier", ["tier"], registry=r)
        self._write_rejected = Counter(
            "kvstore_write_rejected",
            "Writes a tier refused (reason: full, unavailable)",
            ["tier", "reason"],
            registry=r,
        )
        self._encoded_docs = Counter("kvstore_encoded_documents", "Chunks encoded", registry=r)
        self._encoded_tokens = Counter("kvstore_encoded_tokens", "Tokens encoded", registry=r)
        self._encode_seconds = Counter(
            "kvstore_encode_seconds", "Time spent encoding chunks", registry=r
        )
        self._read_series_cache: dict[tuple[str, str], tuple[Counter, Histogram]] = {}
        self._lock = threading.Lock()
        self._counts: defaultdict[str, defaultdict[str, float]] = defaultdict(
            lambda: defaultdict(float)
        )

    def _add(self, name: str, label: str, amount: float = 1.0) -> None:
        with self._lock:
            self._counts[name][label] += amount

    def hit(self, tier: str, nbytes: int, seconds: float, kind: str) -> None:
        self._hits.labels(tier).inc()
        self._add("hits", tier)
        self.read(tier, nbytes, seconds, kind)

    def read(self, tier: str, nbytes: int, seconds: float, kind: str) -> None:
        bytes_read, load_seconds = self._read_series(tier, kind)
        bytes_read.inc(nbytes)
        load_seconds.observe(seconds)
        self._add("bytes_read", tier, nbytes)
        self._add("load_seconds", f"{tier}.{kind}", seconds)
        self._add("loads", f"{tier}.{kind}")

    def _read_series(self, tier: str, kind: str) -> tuple[Counter, Histogram]:
        # Looking labelled series up costs more than the rest of a layer read's bookkeeping.
        series = self._read_series_cache.get((tier, kind))
        if series is None:
            series = (self._bytes_read.labels(tier), self._load_seconds.labels(tier, kind))
            self._read_series_cache[(tier, kind)] = series
        return series

    def miss(self, tier: str) -> None:
        self._misses.labels(tier).inc()
        self._add("misses", tier)

    def unavailable(self, tier: str) -> None:
        self._unavailable.labels(tier).inc()
        self._add("unavailable", tier)

    def discarded(self, tier: str, reason: str) -> None:
        self._discarded.labels(tier, reason).inc()
        self._add("discarded", f"{tier}.{reason}")

    def written(self, tier: str) -> None:
        self._writes.labels(tier).inc()
        self._add("writes", tier)

    def write_rejected(self, tier: str, reason: str) -> None:
        self._write_rejected.labels(tier, reason).inc()
        self._add("write_rejected", f"{tier}.{reason}")

    def encoded(self, documents: int, tokens: int, seconds: float) -> None:
        self._encoded_docs.inc(documents)
        self._encoded_tokens.inc(tokens)
        self._encode_seconds.inc(seconds)
        self._add("encode", "documents", documents)
        self._add("encode", "tokens", tokens)
        self._add("encode", "seconds", seconds)

    def stats(self) -> dict[str, dict[str, float]]:
        """Every count so far, e.g. `stats()["hits"]["redis"]`, plus encode throughput."""
        with self._lock:
            out = {name: dict(values) for name, values in self._counts.items()}
        encode = out.setdefault("encode", {})
        seconds = encode.get("seconds", 0.0)
        encode["tokens_per_s"] = encode.get("tokens", 0.0) / seconds if seconds else 0.0
        encode["documents_per_s"] = encode.get("documents", 0.0) / seconds if seconds else 0.0
        return out
