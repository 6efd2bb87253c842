"""The question assembled in the context's own pass computes what a prefill after the assembly does."""

from __future__ import annotations

import pytest
import torch

from samkv.forward import forward_tokens
from tests.conftest import DOCUMENTS

QUESTION = "What is the vault code at the Oriel bank?"


@pytest.mark.parametrize(
    "method, params",
    [
        ("full", {}),
        ("naive", {}),
        ("samkv", {"keep_ratio": 0.3}),
        ("samkv", {"keep_ratio": 0.3, "complement_mode": "packet"}),  # fused KV, adaptive share
        ("cacheblend", {"recompute_ratio": 0.3}),  # narrows the recomputed tokens layer by layer
        ("epic", {"k": 4}),
        ("snapkv", {"keep_ratio": 0.3}),  # each KV head keeps its own tokens
    ],
)
def test_question_in_the_assembly_equals_a_prefill_after_it(tiny_engine, method, params):
    engine = tiny_engine("qwen2")
    docs = engine.encode_documents(DOCUMENTS)
    request = engine.request(QUESTION, docs, method, params)
    q_len = int(request.question_ids.numel())
    positions = request.layout.question_start + torch.arange(q_len)

    apart = engine.prepare(request, extra=q_len)
    assert apart.logits is None
    context_length = apart.cache.length
    expected = forward_tokens(engine.ops, apart.cache, request.question_ids, positions)

    together = engine.prepare(request, extra=2, question=True)
    assert together.cache.length == context_length + q_len
    assert together.cache.capacity == context_length + q_len + 2
    assert torch.equal(together.keep, apart.keep) and torch.equal(together.recomputed, apart.recomputed)
    assert together.logits is not None
    scale = float(expected.abs().max())
    assert float((together.logits - expected).abs().max()) <= 1e-5 * scale
    for layer in range(engine.ops.shape.num_layers):
        for mine, theirs in zip(together.cache.layer(layer), apart.cache.layer(layer)):
            assert torch.allclose(mine, theirs, atol=1e-5, rtol=1e-4)


def test_scoring_after_an_answer_reads_the_context_without_the_question(tiny_engine):
    """`score_answer` runs the question again with the answer: the same log-probability as
    `answer_logprob`, which never assembles the question."""
    engine = tiny_engine("llama")
    docs = engine.encode_documents(DOCUMENTS)
    streamed = engine.generate(QUESTION, docs, "samkv", max_new_tokens=4, score_answer="4471", keep_ratio=0.3)
    alone = engine.answer_logprob(QUESTION, docs, "4471", "samkv", keep_ratio=0.3)
    assert streamed.answer_logprob == pytest.approx(alone, abs=1e-5)


def test_seeing_dropped_tokens_changes_the_recompute_and_not_the_selection(tiny_engine):
    """`see_dropped` lets the recomputed tokens attend to the stored KV of what no cache keeps:
    the same tokens kept, other KV; with every token kept there is nothing dropped to see."""
    engine = tiny_engine("qwen2")
    docs = engine.encode_documents(DOCUMENTS)

    def prepared(**params):
        return engine.prepare(engine.request(QUESTION, docs, "samkv", params), extra=0, question=True)

    kept_only, seeing = prepared(keep_ratio=0.3), prepared(keep_ratio=0.3, see_dropped=True)
    assert torch.equal(kept_only.keep, seeing.keep)
    assert not torch.allclose(kept_only.logits, seeing.logits, atol=1e-4)
    every, every_seeing = prepared(keep_ratio=1.0), prepared(keep_ratio=1.0, see_dropped=True)
    assert torch.allclose(every.logits, every_seeing.logits, atol=1e-5)
