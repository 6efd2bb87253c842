"""The engine: encodes documents into stored KV once, and answers questions over them by any method."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from samkv.assembly import DocumentAttention, Plan, assemble
from samkv.cache import KVCache, KVMeter
from samkv.complement import entity_match_scores, entity_tokens, reprobe_scores
from samkv.decoding import Sampler, TextPieces, stop_token_ids
from samkv.document import DocumentKV, DocumentSource, InMemorySource
from samkv.errors import ContextTooLong, FingerprintMismatch, InvalidRequest, ReuseRefused
from samkv.forward import Recording, forward_tokens
from samkv.layers import ModelOps
from samkv.layout import Layout
from samkv.methods import Method, PlanContext, make_method
from samkv.methods.base import ProbeFn
from samkv.probe import ProbeScores, run_probe
from samkv.prompt import NEUTRAL_QUESTION, PromptTemplate, PromptTokenizer
from samkv.runtime import LoadedModel, load_model

logger = logging.getLogger(__name__)

LAYOUT_VERSION = 1
DEFAULT_SUMMARY_WINDOW = 8
SELF_CHECK_DOCUMENT = (
    "The lighthouse on Carrow Point has been kept by Marta Quint since 1987. "
    "Its lamp can be seen from 22 nautical miles away."
)
SELF_CHECK_QUESTION = "Who keeps the lighthouse on Carrow Point?"
# Largest logit difference accepted between `naive` on one document and `full`, relative to the
# largest logit: the round-off of the dtype, far below what a misplaced position produces.
SELF_CHECK_TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 5e-3}

Documents = Sequence[DocumentKV] | DocumentSource


@dataclass
class Generation:
    """A finished answer: its text, its token ids and the stats of ARCHITECTURE.md."""

    text: str
    token_ids: list[int]
    stats: dict[str, Any]
    answer_logprob: float | None = None
    kept_indices: list[int] = field(default_factory=list)  # context tokens in the decoding cache


@dataclass
class _Request:
    method: Method
    source: DocumentSource
    layout: Layout
    context_ids: torch.Tensor  # [N]
    question_ids: torch.Tensor  # [|Q|], the answer prefix included
    neutral_ids: torch.Tensor  # the neutral probe question, with the same answer prefix


@dataclass
class _Built:
    cache: KVCache
    meter: KVMeter
    keep: torch.Tensor  # [K] context indices kept
    recomputed: int
    stats: dict[str, Any] = field(default_factory=dict)


class GenerationStream:
    """Iterates over the answer's text pieces as they are decoded; `stats` is set at the end."""

    def __init__(
        self,
        engine: Engine,
        request: _Request,
        max_new_tokens: int,
        sampler: Sampler,
        score_answer_ids: torch.Tensor | None = None,
    ) -> None:
        self._engine = engine
        self._request = request
        self._max_new_tokens = max_new_tokens
        self._sampler = sampler
        self._score_answer_ids = score_answer_ids
        self.token_ids: list[int] = []
        self.text = ""
        self.stats: dict[str, Any] | None = None
        self.answer_logprob: float | None = None
        self.kept_indices: list[int] = []

    def __iter__(self) -> Iterator[str]:
        engine, request = self._engine, self._request
        started = time.perf_counter()
        scored = 0 if self._score_answer_ids is None else self._score_answer_ids.numel()
        built = engine._build(request, extra=request.question_ids.numel() + max(self._max_new_tokens, scored))
        self.kept_indices = built.keep.tolist()
        ops, cache = engine.ops, built.cache
        assembled_length = cache.length
        start = request.layout.question_start
        q_len = int(request.question_ids.numel())
        logits = forward_tokens(ops, cache, request.question_ids, start + torch.arange(q_len))
        decode_bytes = cache.used_bytes
        token = self._sampler(logits)
        first_token_at = time.perf_counter()
        pieces = TextPieces(engine.tokenizer)
        position = start + q_len
        with torch.inference_mode():
            while token not in engine.stop_ids:
                self.token_ids.append(token)
                piece = pieces.push(token)
                if piece:
                    self.text += piece
                    yield piece
                if len(self.token_ids) >= self._max_new_tokens:
                    break
                logits = forward_tokens(ops, cache, torch.tensor([token]), torch.tensor([position]))
                position += 1
                token = self._sampler(logits)
        tail = pieces.flush()
        if tail:
            self.text += tail
            yield tail
        finished = time.perf_counter()
        decode_s = finished - first_token_at
        later_tokens = max(0, len(self.token_ids) - 1)
        self.stats = {
            "method": request.method.name,
            "context_tokens": request.layout.context_len,
            "kept_tokens": int(built.keep.numel()),
            "recomputed_tokens": built.recomputed,
            "keep_ratio": built.keep.numel() / request.layout.context_len if request.layout.context_len else 1.0,
            "kv_bytes_decode": decode_bytes,
            "kv_bytes_peak": built.meter.peak,
            "ttft_ms": (first_token_at - started) * 1000,
            "total_ms": (finished - started) * 1000,
            "tokens_per_s": later_tokens / decode_s if later_tokens and decode_s > 0 else 0.0,
            "generated_tokens": len(self.token_ids),
            "documents": request.layout.num_docs,
            **built.stats,
        }
        if self._score_answer_ids is not None:
            # Scored after the clock stops, over the same assembled cache, so timing is unaffected.
            cache.length = assembled_length
            self.answer_logprob = _answer_logprob(ops, cache, request, self._score_answer_ids)


def _answer_logprob(ops: ModelOps, cache: KVCache, request: _Request, answer_ids: torch.Tensor) -> float:
    """Mean log-probability per token of answer_ids, teacher-forced after the question over `cache`."""
    ids = torch.cat([request.question_ids, answer_ids])
    positions = request.layout.question_start + torch.arange(ids.numel())
    logits = forward_tokens(ops, cache, ids, positions, all_logits=True)
    q_len = request.question_ids.numel()
    predicted = torch.log_softmax(logits[q_len - 1 : -1], dim=-1)  # [|A|, vocab]
    return float(predicted.gather(1, answer_ids.to(predicted.device)[:, None]).mean())


class Engine:
    """Encodes documents into reusable KV caches and answers questions over them.

    `Engine.load()` gives the embedded SmolLM2-135M-Instruct on the CPU in float32; a local
    checkpoint path, `device` and `dtype` select another (CUDA and bfloat16 when available).
    """

    def __init__(
        self, loaded: LoadedModel, summary_window: int = DEFAULT_SUMMARY_WINDOW, self_check: bool = True
    ) -> None:
        self.loaded = loaded
        self.ops = ModelOps(loaded.model)
        self.tokenizer = loaded.tokenizer
        self.template = PromptTemplate.for_tokenizer(self.tokenizer)
        self.prompt = PromptTokenizer(self.tokenizer, self.template)
        self.summary_window = summary_window
        self.fingerprint = hashlib.sha256(
            f"{loaded.weights_fingerprint}:{self.template.digest}:{LAYOUT_VERSION}".encode()
        ).hexdigest()
        self.stop_ids = stop_token_ids(self.tokenizer, loaded.model.generation_config.eos_token_id)
        self.prefix_ids = self.prompt.prefix()
        self.prefix = self._new_cache(self.prefix_len, KVMeter())
        forward_tokens(self.ops, self.prefix, self.prefix_ids, torch.arange(self.prefix_len))
        self.reuse_refusal: str | None = None
        if self_check:
            self.self_check()

    @classmethod
    def load(
        cls,
        model: str | Path | None = None,
        device: str | None = None,
        dtype: str | torch.dtype | None = None,
        cache_dir: Path | None = None,
        self_check: bool = True,
    ) -> Engine:
        """Loads `model` (the embedded model when empty) and runs the reuse self-check."""
        return cls(load_model(model, device, dtype, cache_dir), self_check=self_check)

    @property
    def prefix_len(self) -> int:
        return int(self.prefix_ids.numel())

    @property
    def device(self) -> torch.device:
        return self.ops.device

    @property
    def dtype(self) -> torch.dtype:
        return self.ops.dtype

    @property
    def max_context(self) -> int:
        return self.ops.shape.max_positions

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` as a document chunk would have them."""
        return self.prompt.count(text)

    def _new_cache(self, capacity: int, meter: KVMeter) -> KVCache:
        shape = self.ops.shape
        return KVCache(shape.num_layers, shape.num_kv_heads, shape.head_dim, capacity, self.dtype, self.device, meter)

    # ----- documents -------------------------------------------------------------------------

    def encode_document(self, text: str) -> DocumentKV:
        """The chunk's KV cache, computed after the shared prefix P."""
        return self.encode_documents([text])[0]

    @torch.inference_mode()
    def encode_documents(self, texts: Sequence[str]) -> list[DocumentKV]:
        """Several chunks' caches in one forward pass (each sees only P and itself)."""
        if not texts:
            return []
        ids = []
        for text in texts:
            if not isinstance(text, str) or not text.strip():
                raise InvalidRequest("a document's text must be a non-empty string")
            ids.append(self.prompt.document(text))
        lengths = [int(i.numel()) for i in ids]
        if self.prefix_len + max(lengths) > self.max_context:
            raise ContextTooLong(
                f"a document of {max(lengths)} tokens does not fit after the {self.prefix_len}-token "
                f"prefix in the model's {self.max_context}-token context; split it into smaller chunks"
            )
        layout = Layout.of(self.prefix_len, lengths)
        record = self._encode_layers(torch.cat(ids), layout)
        documents = []
        for i, (offset, length) in enumerate(zip(layout.offsets.tolist(), lengths)):
            window = slice(offset + length - min(self.summary_window, length), offset + length)
            documents.append(
                DocumentKV(
                    token_ids=ids[i],
                    keys=torch.stack([k[:, offset : offset + length] for k in record.keys]).contiguous(),
                    values=torch.stack([v[:, offset : offset + length] for v in record.values]).contiguous(),
                    summary_queries=torch.stack([q[:, window] for q in record.queries]).contiguous(),
                    fingerprint=self.fingerprint,
                    prefix_len=self.prefix_len,
                )
            )
        return documents

    def _encode_layers(self, token_ids: torch.Tensor, layout: Layout) -> Recording:
        """Pre-RoPE KV and queries of every layer for documents that each see only P and themselves.

        Each document attends over its own keys (DocumentAttention with nothing shared), so the
        cost grows with the sum of the squared lengths rather than the square of their total.
        """
        P, N = self.prefix_len, layout.context_len
        shape = self.ops.shape
        meter = KVMeter()
        attention = DocumentAttention(layout, layout.all_tokens(), torch.zeros(N, dtype=torch.bool), self.device)
        positions = (P + torch.arange(N) - layout.offsets[layout.doc_of]).to(self.device)
        keys = torch.empty(shape.num_kv_heads, P + N, shape.head_dim, dtype=self.dtype, device=self.device)
        values = torch.empty_like(keys)
        record = Recording()
        hidden = self.ops.embed(token_ids)
        for layer in range(shape.num_layers):
            keys[:, :P], values[:, :P] = self.prefix.layer(layer)
            q, k, v = self.ops.qkv(layer, hidden)
            record.keys.append(k)
            record.values.append(v)
            record.queries.append(q)
            keys[:, P:], values[:, P:] = self.ops.rope(k, positions), v
            hidden = self.ops.finish(layer, hidden, attention(self.ops, self.ops.rope(q, positions), keys, values, meter))
        return record

    # ----- requests ---------------------------------------------------------------------------

    def _request(
        self, question: str, documents: Documents, method: str, params: dict[str, Any], extra: int,
        answer_prefix: str = "",
    ) -> _Request:
        if not isinstance(question, str) or not question.strip():
            raise InvalidRequest("the question is empty")
        method_obj = make_method(method, **params)
        if method_obj.name != "full" and self.reuse_refusal:
            raise ReuseRefused(self.reuse_refusal)
        source = documents if isinstance(documents, DocumentSource) else InMemorySource(documents)
        metas = list(source.documents)
        for i, meta in enumerate(metas):
            if meta.fingerprint != self.fingerprint or meta.prefix_len != self.prefix_len:
                raise FingerprintMismatch(
                    f"document {i} was encoded by another model, tokenizer or prompt template "
                    f"(fingerprint {meta.fingerprint[:12]}…, expected {self.fingerprint[:12]}…); re-encode it"
                )
        layout = Layout.of(self.prefix_len, [m.length for m in metas])
        if not isinstance(answer_prefix, str):
            raise InvalidRequest("answer_prefix must be a string")
        question_ids = self.prompt.question(question, answer_prefix)
        needed = layout.question_start + question_ids.numel() + extra
        if needed > self.max_context:
            raise ContextTooLong(
                f"the prompt needs {needed} positions (prefix {self.prefix_len}, documents "
                f"{layout.context_len}, question {question_ids.numel()}, generation {extra}) but the "
                f"model's context holds {self.max_context}; retrieve fewer or shorter documents"
            )
        context_ids = torch.cat([m.token_ids for m in metas]) if metas else torch.empty(0, dtype=torch.long)
        neutral_ids = self.prompt.question(NEUTRAL_QUESTION, answer_prefix)
        return _Request(method_obj, source, layout, context_ids, question_ids, neutral_ids)

    def _probe(self, request: _Request, meter: KVMeter) -> ProbeFn:
        def probe(layers: range, with_complement: bool, summary_window: int) -> ProbeScores:
            source = request.source
            if summary_window != self.summary_window:
                source = _SummaryWindow(source, summary_window)
            return run_probe(
                self.ops, self.prefix, source, request.layout, request.question_ids,
                request.neutral_ids, layers, meter, with_complement,
            )

        return probe

    def _bridge_entities(self, request: _Request) -> torch.Tensor:
        """Entity tokens of the context that the question does not itself name: a bridge is what
        the kept text adds to the question; the question's own names are the question term's job,
        and as anchors they match every other person sharing a first or last name."""
        ids = request.context_ids
        named = entity_tokens(self.tokenizer.convert_ids_to_tokens(ids.tolist()))
        return named & ~torch.isin(ids, request.question_ids)

    def _plan(self, request: _Request, meter: KVMeter) -> Plan:
        context = PlanContext(
            request.layout, self.ops.shape.num_layers, self._probe(request, meter),
            reprobe=lambda kept, layers: reprobe_scores(
                self.ops, self.prefix, request.source, request.layout, request.context_ids, kept,
                request.question_ids, layers, meter,
            ),
            entity_match=lambda kept, layers, threshold, max_contexts: entity_match_scores(
                request.source, request.layout, kept, self._bridge_entities(request), layers,
                threshold, max_contexts,
            ),
        )
        return request.method.plan(context)

    def _build(self, request: _Request, extra: int) -> _Built:
        """Runs the method: the decoding cache [P ; kept context] with room for `extra` tokens."""
        meter = KVMeter()
        started = time.perf_counter()
        plan = self._plan(request, meter)
        planned = time.perf_counter()
        cache = self._new_cache(self.prefix_len + int(plan.keep.numel()) + extra, meter)
        recomputed = assemble(
            self.ops, self.prefix, request.source, request.layout, request.context_ids, plan, cache, meter
        )
        stats = {"select_ms": (planned - started) * 1000, "assemble_ms": (time.perf_counter() - planned) * 1000}
        return _Built(cache, meter, plan.keep, recomputed, stats)

    def stream(
        self,
        question: str,
        documents: Documents = (),
        method: str = "samkv",
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        score_answer: str | None = None,
        answer_prefix: str = "",
        **params: Any,
    ) -> GenerationStream:
        """Answers `question` from `documents` (prompt order), yielding text pieces as decoded.

        `params` are the method's parameters (e.g. keep_ratio=0.15 for samkv). Bad input raises
        here, before any work; iterating does the work, and `stats` is set once it ends.
        With `score_answer`, `answer_logprob` is also set at the end: that answer's mean
        log-probability per token over the same cache (what `answer_logprob` computes).
        `answer_prefix` starts the answer in the prompt (e.g. "The answer is:") so a small model
        replies with the answer itself; the text returned is what follows it.
        """
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise InvalidRequest(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        sampler = Sampler(temperature, top_p, seed)
        answer_ids = None
        if score_answer is not None:
            answer_ids = self.prompt.answer(score_answer)
            if answer_ids.numel() == 0:
                raise InvalidRequest("the answer to score is empty")
        extra = max(max_new_tokens, 0 if answer_ids is None else answer_ids.numel())
        request = self._request(question, documents, method, params, extra=extra, answer_prefix=answer_prefix)
        return GenerationStream(self, request, max_new_tokens, sampler, answer_ids)

    def generate(self, question: str, documents: Documents = (), method: str = "samkv", **kwargs: Any) -> Generation:
        """Answers `question` from `documents`; same arguments as `stream`."""
        stream = self.stream(question, documents, method, **kwargs)
        for _ in stream:
            pass
        assert stream.stats is not None
        return Generation(stream.text, stream.token_ids, stream.stats, stream.answer_logprob, stream.kept_indices)

    def select(
        self, question: str, documents: Documents = (), method: str = "samkv", answer_prefix: str = "", **params: Any
    ) -> torch.Tensor:
        """Sorted context indices [K] that `method` keeps for `question`, without assembling or decoding."""
        request = self._request(question, documents, method, params, extra=0, answer_prefix=answer_prefix)
        return self._plan(request, KVMeter()).keep

    @torch.inference_mode()
    def question_logits(self, question: str, documents: Documents = (), method: str = "samkv", **params: Any) -> torch.Tensor:
        """Logits [vocab] of the first answer token: what the identity checks compare."""
        request = self._request(question, documents, method, params, extra=0)
        built = self._build(request, extra=request.question_ids.numel())
        q_len = request.question_ids.numel()
        positions = request.layout.question_start + torch.arange(q_len)
        return forward_tokens(self.ops, built.cache, request.question_ids, positions)[0]

    @torch.inference_mode()
    def answer_logprob(
        self, question: str, documents: Documents, answer: str, method: str = "samkv", **params: Any
    ) -> float:
        """Mean log-probability per token of `answer`, teacher-forced after the question."""
        answer_ids = self.prompt.answer(answer)
        if answer_ids.numel() == 0:
            raise InvalidRequest("the answer is empty")
        request = self._request(question, documents, method, params, extra=answer_ids.numel())
        built = self._build(request, extra=request.question_ids.numel() + answer_ids.numel())
        return _answer_logprob(self.ops, built.cache, request, answer_ids)

    # ----- self-check -------------------------------------------------------------------------

    def self_check(self) -> float:
        """Checks that reuse is exact on this model: `naive` on one document must give `full`'s logits.

        Returns the relative difference; on failure the reuse methods are refused from now on.
        """
        document = self.encode_document(SELF_CHECK_DOCUMENT)
        self.reuse_refusal = None
        full = self.question_logits(SELF_CHECK_QUESTION, [document], method="full")
        naive = self.question_logits(SELF_CHECK_QUESTION, [document], method="naive")
        difference = float((full - naive).abs().max() / full.abs().max().clamp_min(1.0))
        tolerance = SELF_CHECK_TOLERANCE.get(self.dtype, 2e-2)
        if not difference <= tolerance:
            self.reuse_refusal = (
                f"KV reuse is not exact on the model at {self.loaded.path}: with one stored document, "
                f"reuse differs from a full prefill by {difference:.2e} of the largest logit (tolerance "
                f"{tolerance:.0e} for {self.dtype}); only method 'full' is available"
            )
            logger.error(self.reuse_refusal)
        else:
            logger.info("reuse self-check passed (relative logit difference %.2e)", difference)
        return difference


class _SummaryWindow:
    """A source whose summary queries are cut to the last `window` rows."""

    def __init__(self, source: DocumentSource, window: int) -> None:
        self._source = source
        self._window = window

    @property
    def documents(self):
        return self._source.documents

    def read_layer(self, layer: int):
        return [
            type(part)(part.keys, part.values, part.summary_queries[:, -self._window :])
            for part in self._source.read_layer(layer)
        ]
