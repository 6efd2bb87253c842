"""Typed errors of the service and the one mapping from any exception to an OpenAI-shaped error.

Every HTTP error and every mid-stream `error` event goes through `to_api_error`, so a client
sees the same `{"error": {"message", "type", "code"}}` whatever raised it.
"""

from __future__ import annotations

import logging

import kvstore
import retrieval
import samkv

logger = logging.getLogger(__name__)


class ApiError(Exception):
    """An error with its HTTP status, OpenAI error type and machine-readable code."""

    status = 500
    type = "server_error"
    code = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        type: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status or self.status
        self.type = type or self.type
        self.code = code or self.code
        self.headers = headers or {}

    def body(self) -> dict:
        """The JSON body of the error response (and of an SSE `error` event)."""
        return {"error": {"message": self.message, "type": self.type, "code": self.code}}


class InvalidInput(ApiError):
    status, type, code = 422, "invalid_request_error", "invalid_value"


class NotFound(ApiError):
    status, type, code = 404, "invalid_request_error", "not_found"


class Unauthorized(ApiError):
    status, type, code = 401, "authentication_error", "missing_api_key"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(ApiError):
    status, type, code = 403, "permission_error", "invalid_api_key"


class PayloadTooLarge(ApiError):
    status, type, code = 413, "invalid_request_error", "payload_too_large"


class Unavailable(ApiError):
    """Overloaded or still loading: the client should retry after `retry_after_s`."""

    status, type, code = 503, "server_error", "overloaded"

    def __init__(self, message: str, retry_after_s: int, code: str | None = None) -> None:
        super().__init__(message, code=code, headers={"Retry-After": str(retry_after_s)})


# Foreign typed errors: (status, type, code). The first matching class in order wins, so
# subclasses come before their bases.
_MAPPED: list[tuple[type[BaseException], int, str, str]] = [
    (samkv.ContextTooLong, 422, "invalid_request_error", "context_length_exceeded"),
    (samkv.UnknownMethod, 422, "invalid_request_error", "unknown_method"),
    (samkv.FingerprintMismatch, 500, "server_error", "fingerprint_mismatch"),
    (samkv.InvalidRequest, 422, "invalid_request_error", "invalid_value"),
    (samkv.ReuseRefused, 422, "invalid_request_error", "reuse_refused"),
    (retrieval.UnsupportedFileType, 422, "invalid_request_error", "unsupported_file_type"),
    (retrieval.InvalidDocument, 422, "invalid_request_error", "invalid_document"),
    (retrieval.InvalidQuery, 422, "invalid_request_error", "invalid_value"),
    (retrieval.DocumentNotFound, 404, "invalid_request_error", "not_found"),
    (retrieval.ServiceClosed, 503, "server_error", "shutting_down"),
    (kvstore.StoreWriteError, 507, "server_error", "storage_full"),
    (kvstore.DocumentNotFound, 500, "server_error", "kv_cache_missing"),
]


def to_api_error(exc: BaseException, retry_after_s: int = 5) -> ApiError:
    """The `ApiError` a client should see for `exc`; unexpected errors are logged and hidden."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, kvstore.QueueFull):
        return Unavailable(str(exc), retry_after_s)
    for cls, status, kind, code in _MAPPED:
        if isinstance(exc, cls):
            return ApiError(str(exc), status=status, type=kind, code=code)
    logger.error("unexpected error", exc_info=exc)
    return ApiError("internal server error; the server log has the details")
