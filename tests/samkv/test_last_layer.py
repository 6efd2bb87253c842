"""The last layer computes only what feeds the logits: the context's KV and the last token's output."""

from __future__ import annotations

import pytest
import torch

from samkv.forward import forward_tokens
from tests.conftest import DOCUMENTS, prefix_cache

QUESTION = "What is the vault code at the Oriel bank?"


def _rows_finished_per_layer(engine, monkeypatch) -> list[tuple[int, int]]:
    """(layer, rows) of every `finish` call made from now on."""
    calls: list[tuple[int, int]] = []
    original = engine.ops.finish

    def counted(layer, hidden, attn_out):
        calls.append((layer, int(hidden.shape[0])))
        return original(layer, hidden, attn_out)

    monkeypatch.setattr(engine.ops, "finish", counted)
    return calls


@pytest.mark.parametrize(
    "method, params",
    [("full", {}), ("samkv", {"keep_ratio": 0.3}), ("cacheblend", {"recompute_ratio": 0.3})],
)
def test_the_last_layer_finishes_only_the_questions_last_token(tiny_engine, monkeypatch, method, params):
    engine = tiny_engine("qwen2")
    docs = engine.encode_documents(DOCUMENTS)
    request = engine.request(QUESTION, docs, method, params)
    calls = _rows_finished_per_layer(engine, monkeypatch)
    prepared = engine.prepare(request, extra=1, question=True)
    last = engine.ops.shape.num_layers - 1
    assert prepared.logits is not None
    assert [rows for layer, rows in calls if layer == last] == [1]
    # Every earlier layer carries the recomputed tokens and the whole question.
    assert all(rows > 1 for layer, rows in calls if layer < last)


def test_encoding_runs_no_output_of_the_last_layer(tiny_engine, monkeypatch):
    engine = tiny_engine("llama")
    calls = _rows_finished_per_layer(engine, monkeypatch)
    docs = engine.encode_documents(DOCUMENTS)
    last = engine.ops.shape.num_layers - 1
    assert sorted({layer for layer, _ in calls}) == list(range(last))
    assert all(doc.num_layers == last + 1 for doc in docs)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_a_prefill_of_the_last_token_only_gives_the_logits_of_one_that_finishes_every_token(tiny_engine, family):
    """The shortened last layer against the reference that computes every token's output there."""
    engine = tiny_engine(family)
    ids = engine.prompt.question(QUESTION, "")
    positions = engine.prefix_len + torch.arange(int(ids.numel()))
    room = int(ids.numel())
    every = forward_tokens(engine.ops, prefix_cache(engine, room), ids, positions, all_logits=True)[-1:]
    last_only = forward_tokens(engine.ops, prefix_cache(engine, room), ids, positions)
    assert torch.allclose(last_only, every, atol=1e-5 * float(every.abs().max()))
