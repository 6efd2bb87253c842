"""Questions: retrieve, load the chunks' stored KV caches, answer (whole or streamed as SSE)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from app.dependencies import ServicesDep
from app.errors import to_api_error
from app.generation import RunningGeneration
from app.schemas import ErrorResponse, QueryIn, QueryOut, Source, SourceSelection
from app.selection import source_selections
from app.services import Services
from app.sse import SSE_HEADERS, sse_event
from retrieval import SearchHit

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["query"])


def sources_of(hits: list[SearchHit]) -> list[Source]:
    """The retrieved chunks as the API shows them."""
    return [
        Source(document_id=h.document_id, chunk_id=h.chunk_id, score=h.score, text=h.text)
        for h in hits
    ]


@router.post(
    "/query",
    response_model=QueryOut,
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "The answer; with `stream: true`, server-sent events `sources`, "
            "`token` (`{\"text\"}`), `done` (`{\"stats\", \"answer\"}`, and `\"selection\"` "
            "(a list of `SourceSelection`) with `include_selection`) or `error`.",
        },
        **{code: {"model": ErrorResponse} for code in (401, 403, 422, 503)},
    },
)
async def query(body: QueryIn, services: ServicesDep):
    """Answer a question from the retrieved chunks, by `method` (default: samkv)."""
    hits = await services.search(body.question, body.top_k, body.filters)
    running = await services.generate(
        body.question,
        hits,
        method=body.method,
        keep_ratio=body.keep_ratio,
        max_new_tokens=body.max_new_tokens,
    )
    sources = sources_of(hits)
    if not body.stream:
        answer = "".join([piece async for piece in running])
        selection = selections(services, running, sources) if body.include_selection else None
        return QueryOut(answer=answer, sources=sources, stats=running.stats or {}, selection=selection)
    return StreamingResponse(
        _events(services, running, sources, body.include_selection),
        media_type="text/event-stream",
        headers=SSE_HEADERS,
    )


def selections(
    services: Services, running: RunningGeneration, sources: list[Source]
) -> list[SourceSelection]:
    """Per source, the tokens a finished generation kept and recomputed, as character spans."""
    assert running.selection is not None, "read once the generation is done"
    return source_selections(
        sources,
        running.selection.kept_per_document,
        running.selection.recomputed_per_document,
        services.engine.document_token_spans,
    )


async def _events(
    services: Services, running: RunningGeneration, sources: list[Source], include_selection: bool
) -> AsyncIterator[str]:
    yield sse_event("sources", {"sources": [s.model_dump() for s in sources]})
    answer = []
    try:
        async for piece in running:
            answer.append(piece)
            yield sse_event("token", {"text": piece})
    except Exception as exc:  # noqa: BLE001 - headers are sent: the error becomes an event
        yield sse_event("error", to_api_error(exc, services.settings.retry_after_s).body())
        return
    done: dict[str, Any] = {"stats": running.stats, "answer": "".join(answer)}
    if include_selection:
        done["selection"] = [s.model_dump() for s in selections(services, running, sources)]
    yield sse_event("done", done)
