"""FastAPI dependencies: how a route reaches the settings, the services and the caller's identity.

Everything hangs off `request.app.state`, never module globals, so a test can build several
apps side by side or replace any of these with `app.dependency_overrides`.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

from fastapi import Depends, Request

from app.errors import Forbidden, Unauthorized, Unavailable
from app.metrics import AppMetrics
from app.services import Runtime, Services
from app.settings import Settings


def get_settings(request: Request) -> Settings:
    """The settings the app was created with."""
    return request.app.state.settings


def get_runtime(request: Request) -> Runtime:
    """The app's loading state."""
    return request.app.state.runtime


def get_metrics(request: Request) -> AppMetrics:
    """The app's metrics (on its own registry)."""
    return request.app.state.metrics


SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[AppMetrics, Depends(get_metrics)]


def get_services(runtime: Annotated[Runtime, Depends(get_runtime)], settings: SettingsDep) -> Services:
    """The loaded services; 503 with Retry-After while the models are still loading."""
    if runtime.services is None:
        if runtime.error is not None:
            raise Unavailable(
                f"the service failed to start: {runtime.error}", settings.retry_after_s,
                code="startup_failed",
            )
        raise Unavailable(
            "the service is loading its models; retry shortly", settings.retry_after_s,
            code="not_ready",
        )
    return runtime.services


ServicesDep = Annotated[Services, Depends(get_services)]


def require_api_key(request: Request, settings: SettingsDep) -> None:
    """When API keys are configured, require one as `Authorization: Bearer <key>` (writes)."""
    keys = settings.api_key_list
    if not keys:
        return
    header = request.headers.get("authorization", "")
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        raise Unauthorized("an API key is required: send it as `Authorization: Bearer <key>`")
    # Digests have one length, so comparing them reveals neither a key's length nor how much
    # of it matched; every key is compared so the time does not reveal which one nearly did.
    presented_digest = hashlib.sha256(presented.strip().encode()).digest()
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(presented_digest, hashlib.sha256(key.encode()).digest())
    if not matched:
        raise Forbidden("the API key is not valid")


def require_read_key(request: Request, settings: SettingsDep) -> None:
    """Like `require_api_key`, unless the settings open reads to everyone (`public_reads`)."""
    if not settings.public_reads:
        require_api_key(request, settings)
