"""Answering a prepared request: decode token by token, score an answer.

Every entry point of the engine composes the same small steps, as a plain pipeline:
`Engine.prepare` (plan, and assemble the cache with the question in the same pass) → `decode`
(sampled tokens) or `score` (an answer, teacher-forced, over a cache without the question). `GenerationStream` only turns the tokens of an
`Answering` into text as they arrive.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from samkv.cache import KVCache
from samkv.decoding import Sampler, TextPieces
from samkv.forward import forward_tokens
from samkv.layers import ModelOps
from samkv.request import Prepared, Request

if TYPE_CHECKING:
    from samkv.engine import Engine


@dataclass
class Generation:
    """A finished answer: its text, its token ids, its stats and what its cache kept.

    `kept_per_document[i]` and `recomputed_per_document[i]` are token indices within document
    i's own encoded tokens (those `Engine.document_token_spans` gives character spans for).
    """

    text: str
    token_ids: list[int]
    stats: dict[str, Any]
    answer_logprob: float | None = None
    kept_indices: list[int] = field(default_factory=list)  # context tokens in the decoding cache
    kept_per_document: list[list[int]] = field(default_factory=list)
    recomputed_per_document: list[list[int]] = field(default_factory=list)


@torch.inference_mode()
def decode(
    ops: ModelOps, cache: KVCache, logits: torch.Tensor, position: int, sampler: Sampler, stop_ids: set[int],
    max_new_tokens: int,
) -> Iterator[int]:
    """Token ids sampled from `logits` on, each fed back at the next position, until a stop id or
    `max_new_tokens` tokens."""
    token = sampler(logits)
    produced = 0
    while token not in stop_ids:
        yield token
        produced += 1
        if produced >= max_new_tokens:
            return
        logits = forward_tokens(ops, cache, torch.tensor([token]), torch.tensor([position]))
        position += 1
        token = sampler(logits)


@torch.inference_mode()
def score(ops: ModelOps, cache: KVCache, request: Request, answer_ids: torch.Tensor) -> float:
    """Mean log-probability per token of answer_ids, teacher-forced after the question over `cache`
    (which must not hold the question yet)."""
    ids = torch.cat([request.question_ids, answer_ids])
    positions = request.layout.question_start + torch.arange(ids.numel())
    logits = forward_tokens(ops, cache, ids, positions, all_logits=True)
    q_len = request.question_ids.numel()
    predicted = torch.log_softmax(logits[q_len - 1 : -1], dim=-1)  # [|A|, vocab]
    return float(predicted.gather(1, answer_ids.to(predicted.device)[:, None]).mean())


class Answering:
    """One answer: `tokens()` prepares, prefills and decodes; once exhausted, the outcome is set
    (`stats`, `keep`, per-document selections and, with `answer_ids`, `answer_logprob`)."""

    def __init__(
        self, engine: Engine, request: Request, max_new_tokens: int, sampler: Sampler,
        answer_ids: torch.Tensor | None = None,
    ) -> None:
        self.engine = engine
        self.request = request
        self.max_new_tokens = max_new_tokens
        self.sampler = sampler
        self.answer_ids = answer_ids
        self.stats: dict[str, Any] | None = None
        self.answer_logprob: float | None = None
        self.prepared: Prepared | None = None
        self.stop_requested = False

    def stop(self) -> None:
        """Ends decoding after the token just yielded; the outcome is still set."""
        self.stop_requested = True

    def tokens(self) -> Iterator[int]:
        """The answer's token ids as they are decoded."""
        engine, request = self.engine, self.request
        started = time.perf_counter()
        q_len = int(request.question_ids.numel())
        scored = 0 if self.answer_ids is None else int(self.answer_ids.numel())
        prepared = engine.prepare(request, extra=max(self.max_new_tokens, scored), question=True)
        self.prepared = prepared
        context_length = prepared.cache.length - q_len
        logits = prepared.logits
        assert logits is not None  # set whenever the question is assembled
        decode_bytes = prepared.cache.used_bytes
        first_token_at = None
        generated = 0
        for token in decode(engine.ops, prepared.cache, logits, request.layout.question_start + q_len,
                            self.sampler, engine.stop_ids, self.max_new_tokens):
            first_token_at = first_token_at or time.perf_counter()
            generated += 1
            yield token
            if self.stop_requested:
                break
        finished = time.perf_counter()
        first_token_at = first_token_at or finished
        self.stats = _stats(prepared, started, first_token_at, finished, generated, decode_bytes)
        if self.answer_ids is not None:
            # Scored after the clock stops, over the same assembled context (the question is run
            # again, with the answer), so timing is unaffected.
            prepared.cache.length = context_length
            self.answer_logprob = score(engine.ops, prepared.cache, request, self.answer_ids)


def _stats(
    prepared: Prepared, started: float, first_token_at: float, finished: float, generated: int, decode_bytes: int
) -> dict[str, Any]:
    layout = prepared.request.layout
    kept = prepared.cached_tokens
    decode_s = finished - first_token_at
    later_tokens = max(0, generated - 1)
    return {
        "method": prepared.request.method.name,
        "context_tokens": layout.context_len,
        "kept_tokens": kept,
        "recomputed_tokens": int(prepared.recomputed.numel()),
        "keep_ratio": kept / layout.context_len if layout.context_len else 1.0,
        "kv_bytes_decode": decode_bytes,
        "kv_bytes_peak": prepared.meter.peak,
        "ttft_ms": (first_token_at - started) * 1000,
        "total_ms": (finished - started) * 1000,
        "tokens_per_s": later_tokens / decode_s if later_tokens and decode_s > 0 else 0.0,
        "generated_tokens": generated,
        "documents": layout.num_docs,
        **prepared.clock.stats(),
    }


class GenerationStream:
    """Iterates over the answer's text pieces as they are decoded; `stats` is set at the end."""

    def __init__(self, answering: Answering, stop: Callable[[str], bool] | None = None) -> None:
        self.answering = answering
        self.stop = stop
        self.token_ids: list[int] = []
        self.text = ""
        self.stats: dict[str, Any] | None = None
        self.answer_logprob: float | None = None
        self.kept_indices: list[int] = []
        self.kept_per_document: list[list[int]] = []
        self.recomputed_per_document: list[list[int]] = []

    def __iter__(self) -> Iterator[str]:
        pieces = TextPieces(self.answering.engine.tokenizer)
        for token in self.answering.tokens():
            self.token_ids.append(token)
            piece = pieces.push(token)
            if piece:
                self.text += piece
                yield piece
                if self.stop is not None and self.stop(self.text):
                    self.answering.stop()
        tail = pieces.flush()
        if tail:
            self.text += tail
            yield tail
        answering = self.answering
        prepared = answering.prepared
        assert prepared is not None  # set by tokens() before its first token
        self.stats = answering.stats
        self.answer_logprob = answering.answer_logprob
        self.kept_indices = prepared.keep.tolist()
        self.kept_per_document = prepared.kept_per_document
        self.recomputed_per_document = prepared.recomputed_per_document

    def result(self) -> Generation:
        """The finished answer; iterates to the end first if needed."""
        if self.stats is None:
            for _ in self:
                pass
        assert self.stats is not None
        return Generation(self.text, self.token_ids, self.stats, self.answer_logprob, self.kept_indices,
                          self.kept_per_document, self.recomputed_per_document)
