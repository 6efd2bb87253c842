"""The service's Prometheus series, on the registry of one app instance (never the global one)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_TOKEN_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)


class AppMetrics:
    """Request, generation and ingestion metrics; the KV store registers its own on `registry`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        r = registry
        self.requests = Counter(
            "http_requests", "HTTP requests answered", ["method", "route", "status"], registry=r
        )
        self.latency = Histogram(
            "http_request_duration_seconds",
            "Time from request to the last byte of the response",
            ["method", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "generation_time_to_first_token_seconds",
            "Time from the start of generation to the first decoded token",
            ["method"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.generation_seconds = Histogram(
            "generation_duration_seconds", "Time of a whole generation", ["method"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.context_tokens = Histogram(
            "generation_context_tokens_per_request", "Retrieved context tokens per generation", ["method"],
            buckets=_TOKEN_BUCKETS, registry=r,
        )
        self.kept_tokens = Histogram(
            "generation_kept_tokens_per_request", "Context tokens kept in the decoding cache", ["method"],
            buckets=_TOKEN_BUCKETS, registry=r,
        )
        self.kept_tokens_total = Counter(
            "generation_kept_tokens", "Context tokens kept, summed", ["method"], registry=r
        )
        self.recomputed_tokens_total = Counter(
            "generation_recomputed_tokens", "Context tokens recomputed, summed",
            ["method"], registry=r,
        )
        self.generated_tokens_total = Counter(
            "generation_output_tokens", "Answer tokens generated, summed", ["method"], registry=r
        )
        self.generations_active = Gauge(
            "generations_in_flight", "Generations admitted (running or queued)", registry=r
        )
        self.generations_rejected = Counter(
            "generations_rejected", "Generations refused because the queue was full", registry=r
        )
        self.ingest_jobs = Counter(
            "ingest_jobs", "Ingestion jobs finished", ["status"], registry=r
        )
        self.startup_repairs = Counter(
            "startup_repairs",
            "Inconsistencies between the document store and the KV files repaired at start-up",
            ["kind"],
            registry=r,
        )

    def observe_generation(self, stats: dict[str, Any]) -> None:
        """Record the stats of one finished generation."""
        method = str(stats.get("method", "unknown"))
        self.ttft.labels(method).observe(stats.get("ttft_ms", 0.0) / 1000)
        self.generation_seconds.labels(method).observe(stats.get("total_ms", 0.0) / 1000)
        self.context_tokens.labels(method).observe(stats.get("context_tokens", 0))
        self.kept_tokens.labels(method).observe(stats.get("kept_tokens", 0))
        self.kept_tokens_total.labels(method).inc(stats.get("kept_tokens", 0))
        self.recomputed_tokens_total.labels(method).inc(stats.get("recomputed_tokens", 0))
        self.generated_tokens_total.labels(method).inc(stats.get("generated_tokens", 0))
