"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.dependencies import MetricsDep, ServicesDep
from app.schemas import ErrorResponse
from app.services import Services

router = APIRouter(tags=["health"])
metrics_router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up (models may still be loading)."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"model": ErrorResponse}})
async def readyz(services: ServicesDep) -> dict[str, Any]:
    """Ready once the engine, the retrieval service and the KV store are loaded; 503 before.

    `startup_check` reports what the start-up consistency check found and whether the caches
    it found missing are re-encoded yet (`repair`: queued, running, done or failed).
    """
    return {
        "status": "ready",
        "model_fingerprint": services.engine.fingerprint,
        "kv_tiers": [tier.name for tier in services.store.tiers],
        "generations_in_flight": services.generations.admitted,
        "startup_check": _startup_check(services),
    }


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
