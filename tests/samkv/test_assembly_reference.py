"""The assembly against a plain reference: every planned token recomputed under one full mask."""

from __future__ import annotations

import pytest
import torch

from samkv.assembly import Plan, align_layer, assemble
from samkv.cache import KVMeter
from samkv.document import InMemorySource
from samkv.layout import Layout
from tests.conftest import DOCUMENTS

TEXTS = [f"{text} {filler}" for text, filler in zip(DOCUMENTS, [
    "The port is busy in summer and quiet in winter.",
    "Trucks carry the ore to the coast twice a week.",
    "The bank was founded by merchants of the old town.",
    "Fishing is allowed from March until the ice forms again.",
])]


def _visible(layout: Layout, shared: torch.Tensor) -> torch.Tensor:
    """[N, P + N]: what a recomputed token may attend to, as DocumentAttention defines it."""
    P, N = layout.prefix_len, layout.context_len
    doc = layout.doc_of
    same = (doc[:, None] == doc[None, :]) & (torch.arange(N)[None, :] <= torch.arange(N)[:, None])
    earlier = (doc[None, :] < doc[:, None]) & shared[None, :]
    return torch.cat([torch.ones(N, P, dtype=torch.bool), same | earlier], dim=1)


@torch.inference_mode()
def reference(engine, docs, plan: Plan) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values [layers, KVH, P + K, d] with every token of plan.recompute recomputed."""
    ops, P = engine.ops, engine.prefix_len
    layout = Layout.of(P, [d.length for d in docs])
    ids = torch.cat([d.token_ids for d in docs])
    shared = torch.zeros(layout.context_len, dtype=torch.bool)
    shared[plan.keep] = True
    rows = plan.recompute
    mask = _visible(layout, shared)[rows]
    hidden = ops.embed(ids[rows])
    slots = torch.cat([torch.arange(P), P + plan.keep])
    all_keys, all_values = [], []
    for layer in range(ops.shape.num_layers):
        keys, values = align_layer(ops, engine.prefix, [d.layer(layer) for d in docs], layout, layer)
        q, k, v = ops.qkv(layer, hidden)
        positions = layout.positions[rows]
        q, k = ops.rope(q, positions), ops.rope(k, positions)
        k = plan.fuse * k + (1 - plan.fuse) * keys[:, P + rows]
        v = plan.fuse * v + (1 - plan.fuse) * values[:, P + rows]
        keys[:, P + rows], values[:, P + rows] = k, v
        hidden = ops.finish(layer, hidden, ops.attend(q, keys, values, mask))
        all_keys.append(keys[:, slots])
        all_values.append(values[:, slots])
    return torch.stack(all_keys), torch.stack(all_values)


def _assembled(engine, docs, plan: Plan):
    layout = Layout.of(engine.prefix_len, [d.length for d in docs])
    ids = torch.cat([d.token_ids for d in docs])
    meter = KVMeter()
    cache = engine.new_cache(engine.prefix_len + plan.cached_tokens, meter)
    recomputed = assemble(engine.ops, engine.prefix, InMemorySource(docs), layout, ids, plan, cache, meter).recomputed
    return cache, recomputed, layout


def _blocks(layout: Layout, picks: dict[int, list[tuple[int, int]]]) -> torch.Tensor:
    """Context indices of the [start, end) token ranges of each document in `picks`."""
    return torch.cat([int(layout.offsets[doc]) + torch.arange(a, b) for doc, spans in picks.items()
                      for a, b in spans])


@pytest.mark.parametrize("picks, fuse", [
    ({0: [(2, 9)], 2: [(0, 4), (10, 16)], 3: [(5, 12)]}, 1.0),  # a first document's tokens kept
    # The first document keeps nothing: the second is still recomputed, being further from P
    # than when it was encoded.
    ({1: [(3, 8)], 2: [(10, 16)], 3: [(0, 6)]}, 1.0),
    ({0: [(2, 9)], 2: [(0, 4), (10, 16)], 3: [(5, 12)]}, 0.5),
])
def test_samkv_plan_assembles_the_reference_cache(embedded_engine, picks, fuse):
    engine = embedded_engine
    docs = engine.encode_documents(TEXTS)
    layout = Layout.of(engine.prefix_len, [d.length for d in docs])
    keep = _blocks(layout, picks)
    plan = Plan(keep=keep, recompute=keep, fuse=fuse)
    cache, recomputed, layout = _assembled(engine, docs, plan)
    want_keys, want_values = reference(engine, docs, plan)
    L = cache.length
    scale = want_keys.abs().max()
    assert float((cache.keys[:, :, :L] - want_keys).abs().max() / scale) < 1e-4
    assert float((cache.values[:, :, :L] - want_values).abs().max() / want_values.abs().max()) < 1e-4
    # The first document sees here what it saw when encoded: its tokens keep their stored KV,
    # exactly, and are not recomputed.
    assert set(layout.doc_of[recomputed].tolist()) == set(picks) - {0}
    P = engine.prefix_len
    exact = layout.doc_of[keep] == 0
    for layer in range(engine.ops.shape.num_layers):
        keys, values = align_layer(engine.ops, engine.prefix, [d.layer(layer) for d in docs], layout, layer)
        assert torch.equal(cache.keys[layer, :, P:L][:, exact], keys[:, P + keep[exact]])
        assert torch.equal(cache.values[layer, :, P:L][:, exact], values[:, P + keep[exact]])


def test_a_plan_that_keeps_everything_and_recomputes_some_assembles_the_reference_cache(embedded_engine):
    """EPIC's shape: every token kept, the first tokens of each document recomputed."""
    engine = embedded_engine
    docs = engine.encode_documents(TEXTS)
    layout = Layout.of(engine.prefix_len, [d.length for d in docs])
    plan = Plan(keep=layout.all_tokens(), recompute=_blocks(layout, {1: [(0, 6)], 2: [(0, 6)], 3: [(0, 6)]}))
    cache, recomputed, _ = _assembled(engine, docs, plan)
    want_keys, want_values = reference(engine, docs, plan)
    L = cache.length
    assert float((cache.keys[:, :, :L] - want_keys).abs().max() / want_keys.abs().max()) < 1e-4
    assert float((cache.values[:, :, :L] - want_values).abs().max() / want_values.abs().max()) < 1e-4
    assert torch.equal(recomputed, plan.recompute)


class RecordingSource(InMemorySource):
    """Documents in memory that record which documents each layer read asked for."""

    def __init__(self, documents) -> None:
        super().__init__(documents)
        self.asked: list[tuple[int, ...] | None] = []

    def read_layer(self, layer, documents=None):
        self.asked.append(None if documents is None else tuple(documents))
        return super().read_layer(layer, documents)


def test_a_document_with_nothing_kept_or_recomputed_is_not_read(embedded_engine):
    engine = embedded_engine
    docs = engine.encode_documents(TEXTS)
    layout = Layout.of(engine.prefix_len, [d.length for d in docs])
    keep = _blocks(layout, {0: [(2, 9)], 2: [(0, 4)], 3: [(5, 12)]})
    plan = Plan(keep=keep, recompute=keep)
    source = RecordingSource(docs)
    meter = KVMeter()
    cache = engine.new_cache(engine.prefix_len + plan.cached_tokens, meter)
    ids = torch.cat([d.token_ids for d in docs])
    assemble(engine.ops, engine.prefix, source, layout, ids, plan, cache, meter)
    assert source.asked == [(0, 2, 3)] * engine.ops.shape.num_layers
    # Every document keeping something: all are read, as one request.
    every = Plan(keep=_blocks(layout, {d: [(0, 2)] for d in range(4)}), recompute=keep[:0])
    source.asked.clear()
    assemble(engine.ops, engine.prefix, source, layout, ids, every,
             engine.new_cache(engine.prefix_len + every.cached_tokens, meter), meter)
    assert source.asked == [None] * engine.ops.shape.num_layers
