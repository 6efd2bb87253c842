"""ASGI middleware: request metrics, refusing oversized bodies before they are read, and
answering unexpected errors without dropping the connection."""

from __future__ import annotations

import json
import time

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import PayloadTooLarge, to_api_error
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
    """Answers 413 when a request body exceeds `max_bytes`.

    A declared Content-Length is checked before anything is read. A body sent without one
    (chunked) is read up to the limit before the app sees it and then handed on whole, so no
    route can be made to read past the limit.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if length is not None:
            if length.isdigit() and int(length) > self.max_bytes:
                await self._refuse(send, f"the request body has {int(length)} bytes")
                return
            await self.app(scope, receive, send)
            return
        if b"transfer-encoding" not in headers:  # no body at all
            await self.app(scope, receive, send)
            return
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                await self._refuse(send, "the request body is longer")
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send, what: str) -> None:
        error = PayloadTooLarge(f"{what}; at most {self.max_bytes} bytes are accepted")
        payload = json.dumps(error.body()).encode()
        await send({
            "type": "http.response.start",
            "status": error.status,
            "headers": [(b"content-type", b"application/json"),
                        (b"content-length", str(len(payload)).encode())],
        })
        await send({"type": "http.response.body", "body": payload})


class UnexpectedErrors:
    """Answers an exception that no handler took with the API's 500 error body.

    Starlette leaves such exceptions to its outermost middleware, which answers and then
    raises them again for the server to log; uvicorn then closes the connection, and a client
    that reuses it for its next request sees a reset. Here the error is logged (by
    `to_api_error`) and answered, and the connection stays usable. An exception after the
    response started cannot be answered any more and is raised on.
    """

    def __init__(self, app: ASGIApp, retry_after_s: int) -> None:
        self.app = app
        self.retry_after_s = retry_after_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_tracking(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_tracking)
        except Exception as exc:
            if started:
                raise
            error = to_api_error(exc, self.retry_after_s)
            response = JSONResponse(error.body(), status_code=error.status, headers=error.headers)
            await response(scope, receive, send)
