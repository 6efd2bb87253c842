"""ASGI middleware: request metrics, and refusing oversized bodies before they are read."""

from __future__ import annotations

import json
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import PayloadTooLarge
from app.metrics import AppMetrics


class RequestMetrics:
    """Counts requests and times them to the last byte sent (streamed answers included).

    Routes are labelled by their template (`/v1/documents/{document_id}`), not the raw path,
    so ids do not explode the number of series.
    """

    def __init__(self, app: ASGIApp, metrics: AppMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_recording(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_recording)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or ("static" if scope["path"].startswith("/static/") else "unmatched")
            method = scope["method"]
            self.metrics.requests.labels(method, path, str(status)).inc()
            self.metrics.latency.labels(method, path).observe(time.perf_counter() - started)


class BodySizeLimit:
    """Answers 413 when the declared Content-Length exceeds `max_bytes`.

    Bodies sent without a length are bounded where they are parsed (uploads count the
    bytes they read).
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            length = dict(scope["headers"]).get(b"content-length")
            if length is not None and length.isdigit() and int(length) > self.max_bytes:
                error = PayloadTooLarge(
                    f"the request body has {int(length)} bytes; at most {self.max_bytes} are accepted"
                )
                body = json.dumps(error.body()).encode()
                await send({
                    "type": "http.response.start",
                    "status": error.status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())],
                })
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)
