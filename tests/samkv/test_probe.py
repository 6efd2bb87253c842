"""SamKV's probe against a direct computation: each probe prefilled alone over the stored contexts."""

from __future__ import annotations

import pytest
import torch

from samkv.cache import KVMeter
from samkv.forward import Recording, forward_tokens
from samkv.methods.base import PlanContext
from samkv.methods.samkv.probe import NEUTRAL_QUESTION, run_probe
from samkv.stages import StageClock
from tests.conftest import DOCUMENTS

QUESTION = "What is the vault code at the Oriel bank?"


def _attention_on_context(engine, docs, request, ids, layers):
    """[N]: the tokens `ids`, prefilled alone over [P ; every document's stored KV]: their
    attention on each context token, renormalised over the context, averaged over heads, tokens
    and `layers`."""
    layout = request.layout
    P, N, T = layout.prefix_len, layout.context_len, int(ids.numel())
    naive = engine.request(QUESTION, docs, "naive")
    prepared = engine.prepare(naive, extra=T)
    record = Recording()
    positions = layout.question_start + torch.arange(T)
    forward_tokens(engine.ops, prepared.cache, ids, positions, record=record)
    shape = engine.ops.shape
    group = shape.num_heads // shape.num_kv_heads
    visible = torch.ones(T, P + N + T, dtype=torch.bool)
    visible[:, P + N :] = torch.ones(T, T, dtype=torch.bool).tril()
    total = torch.zeros(N)
    for layer in layers:
        keys, _ = prepared.cache.layer(layer)
        keys = keys.repeat_interleave(group, dim=0)  # [H, P + N + T, d]
        queries = engine.ops.rope(record.queries[layer], positions)
        scores = (queries @ keys.transpose(1, 2)) * shape.head_dim**-0.5
        probs = torch.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1)[:, :, P : P + N]
        total += (probs / probs.sum(-1, keepdim=True)).mean((0, 1))
    return total / len(layers)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_both_probes_score_as_if_each_ran_alone(tiny_engine, family):
    engine = tiny_engine(family)
    docs = engine.encode_documents(DOCUMENTS)
    request = engine.request(QUESTION, docs, "samkv")
    context = PlanContext(
        engine.ops, engine.prefix, request.source, request.layout, request.context_ids, request.question_ids,
        engine.prompt, request.answer_prefix, KVMeter(), StageClock(), engine.probe_ops,
    )
    layers = range(1, 3)
    probe = run_probe(context, layers, False, 8)
    neutral_ids = engine.prompt.question(NEUTRAL_QUESTION, request.answer_prefix)
    for got, ids in ((probe.question, request.question_ids), (probe.neutral, neutral_ids)):
        expected = _attention_on_context(engine, docs, request, ids, layers)
        assert got.shape == expected.shape
        assert torch.allclose(got, expected, rtol=1e-4, atol=1e-7)
        assert float(got.sum()) == pytest.approx(1.0, rel=1e-4)
