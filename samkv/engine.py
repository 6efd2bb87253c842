"""The engine: encodes documents into stored KV once, and answers questions over them by any method."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from samkv.assembly import DocumentAttention, Plan, Tail, assemble
from samkv.cache import KVCache, KVMeter
from samkv.decoding import Sampler, stop_token_ids
from samkv.document import DocumentKV, DocumentSource, InMemorySource
from samkv.errors import ContextTooLong, FingerprintMismatch, InvalidRequest, ReuseRefused
from samkv.forward import Recording, forward_tokens
from samkv.generation import Answering, Generation, GenerationStream, score
from samkv.layers import ModelOps
from samkv.layout import Layout
from samkv.methods import PlanContext, make_method
from samkv.prompt import PromptTemplate, PromptTokenizer
from samkv.quantize import PROBE_WEIGHTS, int8_blocks, is_int8
from samkv.request import Prepared, Request
from samkv.request_source import RequestSource
from samkv.runtime import LoadedModel, load_model
from samkv.stages import StageClock, TimedSource

logger = logging.getLogger(__name__)

LAYOUT_VERSION = 1
# Queries of each document's last tokens stored with its KV, for methods that score across documents.
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


class Engine:
    """Encodes documents into reusable KV caches and answers questions over them.

    `Engine.load()` gives the embedded SmolLM2-135M-Instruct on the CPU in float32; a local
    checkpoint path, `device` and `dtype` select another (CUDA and bfloat16 when available).
    """

    def __init__(
        self,
        loaded: LoadedModel,
        summary_window: int = DEFAULT_SUMMARY_WINDOW,
        self_check: bool = True,
        probe_hold_bytes: int | None = 0,
        probe_weights: str = "model",
    ) -> None:
        if probe_weights not in PROBE_WEIGHTS:
            raise ValueError(f"unknown probe_weights {probe_weights!r}; expected one of {', '.join(PROBE_WEIGHTS)}")
        self.loaded = loaded
        # Stored bytes a request keeps from its probe for its assembly (see RequestSource; None:
        # no bound). Nothing by default: keeping them measured no faster and 2.5 × the peak KV.
        self.probe_hold_bytes = probe_hold_bytes
        self.ops = ModelOps(loaded.model)
        # A method's probe only ranks tokens; it may run on int8 copies of the blocks while
        # encoding, recompute and decoding keep the model's own weights (and the self-check).
        self.probe_ops = self.ops
        if probe_weights == "int8" and not is_int8(loaded.model):
            self.probe_ops = ModelOps(loaded.model, int8_blocks(loaded.model))
        self.tokenizer = loaded.tokenizer
        self.template = PromptTemplate.for_tokenizer(self.tokenizer)
        self.prompt = PromptTokenizer(self.tokenizer, self.template)
        self.summary_window = summary_window
        self.fingerprint = hashlib.sha256(
            f"{loaded.weights_fingerprint}:{self.template.digest}:{LAYOUT_VERSION}".encode()
        ).hexdigest()
        self.stop_ids = stop_token_ids(self.tokenizer, loaded.model.generation_config.eos_token_id)
        self.prefix_ids = self.prompt.prefix()
        self.prefix = self.new_cache(self.prefix_len, KVMeter())
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
        """Tokens of `text` alone (no special tokens). A stored chunk has more: `encode_documents`
        appends the document separator, whose tokens this count leaves out."""
        return self.prompt.count(text)

    def document_token_spans(self, text: str) -> list[tuple[int, int]]:
        """The character span [start, end) in `text` of each token of the chunk as
        `encode_documents` stores it, one per token, so that index t of a selection
        (`Generation.kept_per_document`) is span t. The separator's tokens, which are not part
        of `text`, get empty spans at the end of the text."""
        return self.prompt.document_spans(text)

    def new_cache(self, capacity: int, meter: KVMeter) -> KVCache:
        """An empty KV cache of this model for `capacity` tokens, counted by `meter`."""
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
            if layer == shape.num_layers - 1:  # only the KV is stored: the last output feeds nothing
                break
            keys[:, P:], values[:, P:] = self.ops.rope(k, positions), v
            hidden = self.ops.finish(layer, hidden, attention(self.ops, self.ops.rope(q, positions), keys, values, meter))
        return record

    # ----- requests ---------------------------------------------------------------------------

    def request(
        self, question: str, documents: Documents, method: str = "samkv", params: dict[str, Any] | None = None,
        answer_prefix: str = "", extra: int = 0,
    ) -> Request:
        """Checks a question over `documents` for `method` with `params`; `extra` positions are
        reserved after the question (tokens to generate or score). Raises before any work."""
        if not isinstance(question, str) or not question.strip():
            raise InvalidRequest("the question is empty")
        method_obj = make_method(method, **(params or {}))
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
        return Request(method_obj, source, layout, context_ids, question_ids, answer_prefix)

    def _plan(self, request: Request, source: DocumentSource, meter: KVMeter, clock: StageClock) -> Plan:
        context = PlanContext(
            self.ops, self.prefix, source, request.layout, request.context_ids, request.question_ids,
            self.prompt, request.answer_prefix, meter, clock, self.probe_ops,
        )
        with clock.stage("select"):
            return request.method.plan(context)

    def prepare(self, request: Request, extra: int, question: bool = False) -> Prepared:
        """Runs the method: the decoding cache [P ; kept context] with room for `extra` tokens.

        With `question`, the question is assembled too, in the same pass (the cache then also
        holds it, and `Prepared.logits` are its last token's: the first answer token's), and the
        room is for `extra` tokens after it.
        Stored layers are read through a `RequestSource`, the next one while the current one is
        used; the probe's layers are kept for the assembly up to `probe_hold_bytes`. The waits
        for stored KV are timed as "load", the method's looking as
        "probe", the rest of its decision as "select", and the assembly with its recomputation
        (and the question) as "assemble".
        """
        meter, clock = KVMeter(), StageClock()
        reads = RequestSource(request.source, self.ops.shape.num_layers, meter, self.probe_hold_bytes)
        tail = None
        if question:
            q_len = int(request.question_ids.numel())
            tail = Tail(request.question_ids, request.layout.question_start + torch.arange(q_len))
        try:
            source = TimedSource(reads, clock)
            plan = self._plan(request, source, meter, clock)
            with clock.stage("assemble"), reads.final_pass():
                room = extra + (0 if tail is None else int(tail.token_ids.numel()))
                cache = self.new_cache(self.prefix_len + plan.cached_tokens + room, meter)
                assembled = assemble(
                    self.ops, self.prefix, source, request.layout, request.context_ids, plan, cache, meter, tail
                )
        finally:
            reads.close()
        return Prepared(request, cache, meter, clock, plan.keep, assembled.recomputed, plan.cached_tokens,
                        assembled.logits)

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
        stop: Callable[[str], bool] | None = None,
        **params: Any,
    ) -> GenerationStream:
        """Answers `question` from `documents` (prompt order), yielding text pieces as decoded.

        `params` are the method's parameters (e.g. keep_ratio=0.15 for samkv). Bad input raises
        here, before any work; iterating does the work, and `stats` is set once it ends.
        With `score_answer`, `answer_logprob` is also set at the end: that answer's mean
        log-probability per token over the same cache (what `answer_logprob` computes).
        `answer_prefix` starts the answer in the prompt (e.g. "The answer is:") so a small model
        replies with the answer itself; the text returned is what follows it.
        `stop(text)`, called with the answer so far after each piece, ends decoding when true.
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
        request = self.request(question, documents, method, params, answer_prefix, extra)
        return GenerationStream(Answering(self, request, max_new_tokens, sampler, answer_ids), stop)

    def generate(self, question: str, documents: Documents = (), method: str = "samkv", **kwargs: Any) -> Generation:
        """Answers `question` from `documents`; same arguments as `stream`."""
        return self.stream(question, documents, method, **kwargs).result()

    def select(
        self, question: str, documents: Documents = (), method: str = "samkv", answer_prefix: str = "", **params: Any
    ) -> torch.Tensor:
        """Sorted context indices [K] that `method` keeps for `question`, without assembling or decoding."""
        request = self.request(question, documents, method, params, answer_prefix)
        meter, clock = KVMeter(), StageClock()
        reads = RequestSource(request.source, self.ops.shape.num_layers, meter, self.probe_hold_bytes)
        try:
            return self._plan(request, TimedSource(reads, clock), meter, clock).keep
        finally:
            reads.close()

    def question_logits(self, question: str, documents: Documents = (), method: str = "samkv", **params: Any) -> torch.Tensor:
        """Logits [vocab] of the first answer token: what the identity checks compare."""
        logits = self.prepare(self.request(question, documents, method, params), extra=0, question=True).logits
        assert logits is not None  # set whenever the question is assembled
        return logits[0]

    def answer_logprob(
        self, question: str, documents: Documents, answer: str, method: str = "samkv", **params: Any
    ) -> float:
        """Mean log-probability per token of `answer`, teacher-forced after the question."""
        answer_ids = self.prompt.answer(answer)
        if answer_ids.numel() == 0:
            raise InvalidRequest("the answer is empty")
        request = self.request(question, documents, method, params, extra=answer_ids.numel())
        prepared = self.prepare(request, extra=request.question_ids.numel() + answer_ids.numel())
        return score(self.ops, prepared.cache, request, answer_ids)

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
