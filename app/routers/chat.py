"""OpenAI-compatible chat completions: retrieval on the last user message, answers by SamKV.

Extra body fields `method`, `keep_ratio`, `top_k`, `filters` and `include_selection` choose
how; the answer carries the retrieved chunks in an extra `sources` field (on the first chunk
when streaming), the generation stats in `stats` and, with `include_selection`, the kept and
recomputed spans of each source in `selection` (on the last chunk).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from app.dependencies import ServicesDep
from app.errors import InvalidInput, to_api_error
from app.generation import RunningGeneration
from app.routers.query import selections, sources_of
from app.schemas import ChatCompletionIn, ErrorResponse, Source
from app.services import Services
from app.sse import SSE_HEADERS, sse_data

router = APIRouter(prefix="/v1", tags=["openai"])

MODEL_ID = "samkv-rag"


@router.get("/models")
async def list_models() -> dict[str, Any]:
    """The one model this service answers with (OpenAI's list format)."""
    return {
        "object": "list",
        "data": [{"id": MODEL_ID, "object": "model", "created": 0, "owned_by": "samkv-rag"}],
    }


@router.post(
    "/chat/completions",
    responses={
        200: {"description": "A chat.completion, or with `stream` chat.completion.chunk events "
              "ending with `data: [DONE]`", "content": {"text/event-stream": {}}},
        **{code: {"model": ErrorResponse} for code in (401, 403, 422, 503)},
    },
)
async def chat_completions(body: ChatCompletionIn, services: ServicesDep):
    """Answer the last user message from the retrieved chunks."""
    question = _last_user_message(body)
    hits = await services.search(question, body.top_k, body.filters)
    max_new_tokens = body.max_completion_tokens or body.max_tokens
    running = await services.generate(
        question,
        hits,
        method=body.method,
        keep_ratio=body.keep_ratio,
        max_new_tokens=max_new_tokens,
        temperature=body.temperature if body.temperature is not None else 0.0,
        top_p=body.top_p if body.top_p is not None else 1.0,
        seed=body.seed,
    )
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    limit = max_new_tokens or services.settings.max_new_tokens
    prompt_tokens = services.engine.count_tokens(question)
    sources = sources_of(hits)
    if body.stream:
        return StreamingResponse(
            _chunks(services, running, sources, completion_id, created, body.model, limit,
                    prompt_tokens, body.include_selection),
            media_type="text/event-stream",
            headers=SSE_HEADERS,
        )
    answer = "".join([piece async for piece in running])
    stats = running.stats or {}
    selection = _selection_field(services, running, sources, body.include_selection)
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": body.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer},
                "finish_reason": _finish_reason(stats, limit),
                "logprobs": None,
            }
        ],
        "usage": _usage(stats, prompt_tokens),
        "sources": [s.model_dump() for s in sources],
        "stats": stats,
        **selection,
    }


def _selection_field(
    services: Services, running: RunningGeneration, sources: list[Source], include: bool
) -> dict[str, Any]:
    """{"selection": [...]} of a finished generation when asked for, else nothing."""
    if not include:
        return {}
    return {"selection": [s.model_dump() for s in selections(services, running, sources)]}


def _last_user_message(body: ChatCompletionIn) -> str:
    for message in reversed(body.messages):
        if message.role == "user":
            text = message.text()
            if text.strip():
                return text
            break
    raise InvalidInput("the conversation has no user message with text to answer", code="no_question")


def _finish_reason(stats: dict[str, Any], limit: int) -> str:
    return "length" if stats.get("generated_tokens", 0) >= limit else "stop"


def _usage(stats: dict[str, Any], question_tokens: int) -> dict[str, int]:
    # The prompt the model attends to is the retrieved context plus the question.
    prompt = int(stats.get("context_tokens", 0)) + question_tokens
    completion = int(stats.get("generated_tokens", 0))
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def _chunks(
    services: Services,
    running: RunningGeneration,
    sources: list[Source],
    completion_id: str,
    created: int,
    model: str,
    limit: int,
    question_tokens: int,
    include_selection: bool,
) -> AsyncIterator[str]:
    def chunk(delta: dict[str, Any], finish_reason: str | None = None, **extra: Any) -> str:
        return sse_data({
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
            **extra,
        })

    yield chunk({"role": "assistant", "content": ""}, sources=[s.model_dump() for s in sources])
    try:
        async for piece in running:
            yield chunk({"content": piece})
    except Exception as exc:  # noqa: BLE001 - headers are sent: OpenAI's clients read this shape
        yield sse_data(to_api_error(exc, services.settings.retry_after_s).body())
        yield sse_data("[DONE]")
        return
    stats = running.stats or {}
    yield chunk({}, _finish_reason(stats, limit), usage=_usage(stats, question_tokens), stats=stats,
                **_selection_field(services, running, sources, include_selection))
    yield sse_data("[DONE]")
