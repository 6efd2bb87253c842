"""SamKV's "packet" mode and the adaptive share: the formulas on constructed numbers, the budget,
the sink and local tokens, fuse in the assembly, and the bench's ablation syntax."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from app.bench.runner import method_configs
from samkv.errors import InvalidRequest
from samkv.layout import Layout
from samkv.methods import make_method
from samkv.methods.samkv.packet import (
    anchor_share,
    complementary_queries,
    fit_reserve,
    grouped_by_kv_head,
    packet_keep,
    reserved_tokens,
    split_budget,
)
from samkv.methods.samkv.probe import ProbeScores
from tests.conftest import DOCUMENTS

QUESTION = "What is the vault code at the Oriel bank?"


class ConstructedEvidence:
    """Fixed scores (the question's serve the probe and the re-probe); records the packet calls."""

    def __init__(self, question: torch.Tensor, packet: torch.Tensor | None = None) -> None:
        self.question = question
        self.packet_scores = question if packet is None else packet
        self.packet_calls: list[tuple[int, int, range, int]] = []

    def probe(self, layers, with_complement, summary_window):
        zeros = torch.zeros_like(self.question)
        return ProbeScores(self.question, zeros, zeros)

    def reprobe(self, kept, layers):
        return self.question

    def entity_match(self, anchors, layers, threshold, max_contexts):
        return torch.zeros_like(self.question)

    def packet(self, sink, local, layers, window):
        self.packet_calls.append((sink, local, layers, window))
        return self.packet_scores


def test_complementary_query_adds_the_other_documents_weighted_by_their_absolute_cosine():
    question = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # [H=2, d=2]
    documents = torch.tensor([
        [[1.0, 0.0], [0.0, 1.0]],  # cos 1 on both heads
        [[0.0, 2.0], [3.0, 0.0]],  # cos 0: adds nothing
        [[-3.0, 0.0], [0.0, -1.0]],  # cos -1: counts as much as cos 1
    ])
    got = complementary_queries(question, documents)
    # head 0: q + (d1·0 + d2·1) / 2, q + (d0·1 + d2·1) / 2, q + (d0·1 + d1·0) / 2
    assert torch.allclose(got[:, 0], torch.tensor([[-0.5, 0.0], [0.0, 0.0], [1.5, 0.0]]))
    assert torch.allclose(got[:, 1], torch.tensor([[0.0, 0.5], [0.0, 1.0], [0.0, 1.5]]))
    alone = complementary_queries(question, documents[:1])
    assert torch.equal(alone, question[None]), "a single document has no other to add"


def test_query_heads_are_summed_onto_the_kv_head_they_read():
    queries = torch.arange(4 * 3, dtype=torch.float32).reshape(4, 3)  # H=4, d=3
    grouped = grouped_by_kv_head(queries, 2)
    assert torch.equal(grouped, torch.stack([queries[0] + queries[1], queries[2] + queries[3]]))


@pytest.mark.parametrize(("anchor", "share"), [(2.0, 2 / 3), (1.0, 1.0), (4.0, 0.0), (5.0, 0.0), (0.5, 0.0)])
def test_anchor_share_is_where_the_anchor_sits_between_the_best_and_worst_block(anchor, share):
    """One sink and one local token around four blocks of two, whose means are 1, 2, 3, 4."""
    middle = torch.tensor([0.5, 1.5, 2.0, 2.0, 3.5, 2.5, 4.0, 4.0])
    scores = torch.cat([torch.tensor([anchor - 1.0]), middle, torch.tensor([anchor + 1.0])])
    reserved = torch.zeros(10, dtype=torch.bool)
    reserved[[0, 9]] = True
    assert anchor_share(scores, reserved, 2) == pytest.approx(share)


def test_split_budget_follows_the_weights_within_each_capacity():
    assert split_budget(30, torch.tensor([2.0, 1.0, 0.0]), torch.tensor([100, 100, 100])).tolist() == [20, 10, 0]
    assert split_budget(30, torch.tensor([1.0, 1.0]), torch.tensor([5, 100])).tolist() == [5, 25]
    # No weight anywhere: the budget still goes out, in proportion to the room.
    assert split_budget(8, torch.tensor([0.0, 0.0]), torch.tensor([10, 30])).tolist() == [2, 6]
    assert split_budget(500, torch.tensor([1.0, 0.0]), torch.tensor([10, 20])).tolist() == [10, 20]


@settings(max_examples=200, deadline=None)
@given(
    budget=st.integers(0, 400),
    weights=st.lists(st.floats(0, 5), min_size=1, max_size=8),
    seed=st.integers(0, 2**16),
)
def test_split_budget_spends_exactly_what_fits(budget, weights, seed):
    capacity = torch.randint(0, 60, (len(weights),), generator=torch.Generator().manual_seed(seed))
    given_ = split_budget(budget, torch.tensor(weights), capacity)
    assert int(given_.sum()) == min(budget, int(capacity.sum()))
    assert bool((given_ >= 0).all()) and bool((given_ <= capacity).all())


@settings(max_examples=200, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 90), min_size=1, max_size=8),
    ratio=st.floats(0.01, 1.0),
    sink=st.integers(0, 6),
    local=st.integers(1, 10),
    block=st.integers(1, 20),
    adaptive=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_packet_keeps_the_budget_and_every_sink_and_local_token(lengths, ratio, sink, local, block, adaptive, seed):
    layout = Layout.of(5, lengths)
    N = layout.context_len
    budget = math.ceil(ratio * N - 1e-9)
    scores = torch.randn(N, generator=torch.Generator().manual_seed(seed))
    kept = packet_keep(scores, layout, budget, sink, local, block, adaptive)
    assert torch.equal(kept, torch.unique(kept)), "sorted and without repeats"
    assert kept.numel() == budget
    reserve = reserved_tokens(layout, *fit_reserve(lengths, sink, local, budget))
    assert bool(torch.isin(reserve.nonzero().squeeze(1), kept).all())
    if sum(min(n, sink + local) for n in lengths) <= budget:
        assert bool(reserve.eq(reserved_tokens(layout, sink, local)).all()), "nothing cut when it fits"


def test_reserve_is_cut_to_a_common_cap_when_it_alone_exceeds_the_budget():
    assert fit_reserve([30, 30], 4, 8, 24) == (4, 8)
    assert fit_reserve([30, 30], 4, 8, 23) == (4, 7)
    assert fit_reserve([30, 30], 4, 8, 12) == (3, 3)
    assert fit_reserve([30, 30], 4, 8, 0) == (0, 0)


def test_packet_gives_the_middle_budget_to_the_document_whose_blocks_beat_its_anchor():
    """Two documents of 1 sink + 8 middle (4 blocks of 2) + 1 local token. Document 0's anchor
    sits at its worst block (p = 1); document 1's best block scores highest overall, but its
    anchor lies above all of its blocks (p = 0). Adaptive: the 4 middle tokens go to document 0's
    two best blocks; best-first over all documents they would start with document 1's."""
    doc0 = torch.tensor([1.0, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 4.0, 4.0, 1.0])
    doc1 = torch.tensor([20.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 9.0, 9.0, 20.0])
    layout = Layout.of(0, [10, 10])
    scores = torch.cat([doc0, doc1])
    adaptive = packet_keep(scores, layout, 8, 1, 1, 2, adaptive=True)
    assert adaptive.tolist() == [0, 5, 6, 7, 8, 9, 10, 19]
    best_first = packet_keep(scores, layout, 8, 1, 1, 2, adaptive=False)
    assert best_first.tolist() == [0, 7, 8, 9, 10, 17, 18, 19]


def test_packet_plan_reads_the_stable_layers_and_fuses_by_default():
    layout = Layout.of(3, [40, 40, 40])
    evidence = ConstructedEvidence(torch.randn(120, generator=torch.Generator().manual_seed(0)))
    plan = make_method("samkv", complement_mode="packet", keep_ratio=0.5).plan_over(evidence, layout, 30)
    assert evidence.packet_calls == [(4, 8, range(26, 30), 8)]
    assert plan.keep.numel() == 60 and torch.equal(plan.recompute, plan.keep)
    assert plan.fuse == 0.9
    assert bool(torch.isin(reserved_tokens(layout, 4, 8).nonzero().squeeze(1), plan.keep).all())
    custom = make_method("samkv", complement_mode="packet", fuse=1.0, stable_layers=(10, 12), sink_tokens=2)
    assert custom.plan_over(evidence, layout, 30).fuse == 1.0
    assert evidence.packet_calls[-1] == (2, 8, range(10, 12), 8)
    # The other modes keep fresh KV unless asked; complement=False leaves packet mode's defaults too.
    assert make_method("samkv").plan_over(evidence, layout, 30).fuse == 1.0
    assert make_method("samkv", fuse=0.5).plan_over(evidence, layout, 30).fuse == 0.5
    assert make_method("samkv", complement_mode="packet", complement=False).plan_over(evidence, layout, 30).fuse == 1.0


@pytest.mark.parametrize("mode", ["entity", "reprobe", "summary", None])
def test_adaptive_share_splits_any_modes_budget_by_the_anchor_rule(mode):
    """The question term alone would take both of document 1's high blocks; its anchor (its first
    and last tokens) lies above them, so its share is 0, and B goes to document 0 (p = 1)."""
    doc0 = torch.tensor([1.0, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 4.0, 4.0, 1.0])
    doc1 = torch.tensor([20.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 9.0, 9.0, 20.0])
    layout = Layout.of(0, [10, 10])
    evidence = ConstructedEvidence(torch.cat([doc0, doc1]))
    params = {"complement": False} if mode is None else {"complement_mode": mode, "complement_weight": 0.5}
    common = dict(keep_ratio=0.3, block_size=2, sink_tokens=1, local_tokens=1, debias="none",
                  min_budget_blocks_per_context=0, **params)
    adaptive = make_method("samkv", adaptive_share=True, **common).plan_over(evidence, layout, 4).keep
    assert adaptive.numel() == 6
    assert set(layout.doc_of[adaptive].tolist()) == {0}
    best_first = make_method("samkv", **common).plan_over(evidence, layout, 4).keep
    assert best_first.numel() == 6 and 1 in layout.doc_of[best_first].tolist()


def test_packet_parameters_are_validated():
    for bad in ({"fuse": 1.5}, {"fuse": -0.1}, {"sink_tokens": 0, "local_tokens": 0}, {"local_tokens": -1},
                {"adaptive_share": "yes"}, {"adaptive_share": True, "global_budget": False},
                {"complement_mode": "packet", "global_budget": False}):
        with pytest.raises(InvalidRequest):
            make_method("samkv", **bad)
    # λ is no budget share in packet mode, so it may be 1 or more.
    make_method("samkv", complement_mode="packet", complement_weight=1.0)


def test_bench_ablations_accept_any_parameter_with_its_type():
    configs = method_configs(["samkv"], [0.15], ablations=["complement_mode=packet", "adaptive_share=True",
                                                           "fuse=0.9", "complement=False"])
    params = {c.label: c.params for c in configs}
    assert params["samkv[complement_mode=packet]@0.15"]["complement_mode"] == "packet"
    assert params["samkv[adaptive_share=True]@0.15"]["adaptive_share"] is True
    assert params["samkv[fuse=0.9]@0.15"]["fuse"] == 0.9
    assert params["samkv[complement=False]@0.15"]["complement"] is False
    for config in configs:
        make_method(config.method, **config.params)
    with pytest.raises(ValueError, match="parameter=value"):
        method_configs(["samkv"], [0.15], ablations=["no-such-ablation"])


def test_fuse_mixes_recomputed_and_stored_kv_in_the_assembly(tiny_engine):
    """Layer 0's fresh KV equals the stored one (a token's embedding alone makes it), so the
    layer-1 input is the same whatever fuse is, and layer 1 must hold exactly
    fuse · fresh + (1 − fuse) · stored. Packet mode fuses at 0.9 unless told otherwise."""
    engine = tiny_engine("llama")
    docs = engine.encode_documents(DOCUMENTS)
    P = engine.prefix_len

    def prepared(**params):
        request = engine.request(QUESTION, docs, "samkv", dict(complement_mode="packet", keep_ratio=0.5, **params))
        return engine.prepare(request, extra=0)

    fresh, stored, fused, default = (prepared(**p) for p in ({"fuse": 1.0}, {"recompute": False}, {"fuse": 0.9}, {}))
    assert torch.equal(fresh.keep, fused.keep) and torch.equal(stored.keep, fused.keep)
    for index in (0, 1):  # keys, values
        f, s, m = (built.cache.layer(1)[index][:, P:] for built in (fresh, stored, fused))
        assert not torch.allclose(f, s, atol=1e-3), "recomputation changes layer 1"
        assert torch.allclose(m, 0.9 * f + 0.1 * s, atol=1e-5)
    for layer in range(engine.ops.shape.num_layers):
        assert torch.equal(default.cache.layer(layer)[0], fused.cache.layer(layer)[0])
