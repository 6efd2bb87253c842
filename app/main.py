"""The FastAPI application: `create_app(settings)` builds one, its lifespan loads the models."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CollectorRegistry
from starlette.exceptions import HTTPException as StarletteHTTPException

import kvstore
import retrieval
import samkv
from app.dependencies import require_read_key
from app.errors import ApiError, to_api_error
from app.metrics import AppMetrics
from app.middleware import BodySizeLimit, RequestMetrics, UnexpectedErrors
from app.routers import chat, documents, health, jobs, page, query
from app.routers.page import STATIC_DIR
from app.services import Runtime, Services
from app.settings import Settings

logger = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, *, engine: samkv.Engine | None = None) -> FastAPI:
    """A new app instance with its own metrics registry and services.

    The models load in the background after start-up: `/healthz` answers at once, `/readyz`
    and the API answer 503 (with Retry-After) until loading finished. Pass `engine` to reuse an
    engine already loaded in this process.
    """
    settings = settings or Settings()
    registry = CollectorRegistry()
    metrics = AppMetrics(registry)
    runtime = Runtime()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loading = asyncio.create_task(_load(settings, metrics, runtime, engine))
        try:
            yield
        finally:
            await asyncio.shield(loading)
            if runtime.services is not None:
                await asyncio.to_thread(runtime.services.close)
                runtime.services = None

    app = FastAPI(
        title="SamKV RAG",
        summary="Questions answered over precomputed per-chunk KV caches, reused with SamKV.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.runtime = runtime

    # Every API route needs a key to read (unless reads are public); writes add their own check.
    reads = [Depends(require_read_key)]
    app.include_router(health.router)
    app.include_router(page.router)
    app.include_router(health.metrics_router, dependencies=reads)
    app.include_router(documents.router, dependencies=reads)
    app.include_router(jobs.router, dependencies=reads)
    app.include_router(query.router, dependencies=reads)
    app.include_router(chat.router, dependencies=reads)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    _install_error_handlers(app, settings.retry_after_s)
    # The last added runs first: metrics see every answer, errors become answers innermost.
    app.add_middleware(UnexpectedErrors, retry_after_s=settings.retry_after_s)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_request_bytes)
    app.add_middleware(RequestMetrics, metrics=metrics)
    return app


async def _load(
    settings: Settings, metrics: AppMetrics, runtime: Runtime, engine: samkv.Engine | None
) -> None:
    try:
        services = await asyncio.to_thread(Services.load, settings, metrics, engine)
    except Exception as exc:
        logger.exception("the service failed to load")
        runtime.error = str(exc) or type(exc).__name__
        return
    runtime.services = services
    logger.info("ready: model %s, data in %s", services.engine.fingerprint[:12], settings.data_dir)
    # After readiness: reads re-encode a missing cache themselves, so nothing waits on this.
    try:
        await asyncio.to_thread(services.check_consistency)
    except Exception:  # a failed check leaves the service as usable as it was before it
        logger.exception("the start-up consistency check failed")
    if settings.sample_collection:
        await asyncio.to_thread(services.ingest_sample_collection)


def _error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


def _install_error_handlers(app: FastAPI, retry_after_s: int) -> None:
    """Map every exception once to the OpenAI error shape."""

    async def typed(request: Request, exc: Exception) -> JSONResponse:
        return _error_response(to_api_error(exc, retry_after_s))

    async def validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for error in exc.errors()[:5]:
            where = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
            problems.append(f"{where}: {error.get('msg')}" if where else str(error.get("msg")))
        message = "invalid request: " + "; ".join(problems)
        return _error_response(ApiError(message, status=422, type="invalid_request_error",
                                        code="invalid_value"))

    async def http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:
            # FastAPI's answer to a body it cannot decode: invalid input, a 422 like the rest.
            return _error_response(ApiError(f"invalid request body: {exc.detail}", status=422,
                                            type="invalid_request_error", code="invalid_body"))
        code = "not_found" if exc.status_code == 404 else f"http_{exc.status_code}"
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return _error_response(ApiError(str(exc.detail), status=exc.status_code, type=kind,
                                        code=code, headers=exc.headers))

    app.add_exception_handler(ApiError, typed)
    app.add_exception_handler(samkv.SamKVError, typed)
    app.add_exception_handler(retrieval.RetrievalError, typed)
    app.add_exception_handler(kvstore.KVStoreError, typed)
    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(StarletteHTTPException, http)
    app.add_exception_handler(Exception, typed)
