"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.dependencies import MetricsDep, ServicesDep, SettingsDep
from app.errors import Unavailable
from app.schemas import ErrorResponse
from app.services import Services

router = APIRouter(tags=["health"])
metrics_router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up (models may still be loading)."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"model": ErrorResponse}})
async def readyz(services: ServicesDep, settings: SettingsDep) -> dict[str, Any]:
    """Ready once the engine, the retrieval service and the KV store are loaded and the
    database answers; 503 with the reason (and Retry-After) otherwise.

    `startup_check` reports what the start-up consistency check found and whether the caches
    it found missing are re-encoded yet (`repair`: queued, running, done or failed).
    """
    reason = services.unavailable_reason()
    if reason is not None:
        raise Unavailable(reason, settings.retry_after_s, code="database_unavailable")
    return {
        "status": "ready",
        "index": _index_state(services),
        "model_fingerprint": services.engine.fingerprint,
        "kv_tiers": [tier.name for tier in services.store.tiers],
        "generations_in_flight": services.generations.admitted,
        "startup_check": _startup_check(services),
    }


def index_digest(ids: Any) -> str:
    """sha256 of chunk ids in ascending order as little-endian int64: equal digests, equal sets."""
    return hashlib.sha256(np.asarray(ids, dtype="<i8").tobytes()).hexdigest()


def _index_state(services: Services) -> dict[str, Any]:
    """This replica's index: the change version it reflects, its size and a digest of its ids,
    to compare replicas with each other and with the chunk table."""
    ids = services.retrieval.index_ids()
    return {"version": services.retrieval.index_version, "chunks": len(ids),
            "ids_sha256": index_digest(ids)}


def _startup_check(services: Services) -> dict[str, Any] | None:
    """The start-up consistency report and the state of its repair; None while it runs."""
    if services.consistency is None:
        return None
    job = services.repair_job
    repair = job.progress().status if job is not None else "done"
    return {**services.consistency.as_dict(), "repair": repair}


@metrics_router.get("/metrics", response_class=Response)
async def metrics(app_metrics: MetricsDep) -> Response:
    """Request counts and latencies, time to first token, tokens kept, KV tier hits."""
    return Response(generate_latest(app_metrics.registry), media_type=CONTENT_TYPE_LATEST)
