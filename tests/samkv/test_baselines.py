"""The baselines keep what their papers say: SnapKV per head, CacheBlend's gradual filter, EPIC's k."""

from __future__ import annotations

import math

import pytest
import torch

from samkv import UnknownMethod
from samkv.assembly import align_layer
from samkv.methods import METHODS, make_method, method_info
from tests.conftest import DOCUMENTS

QUESTION = "What is the vault code at the Oriel bank?"


def test_snapkv_heads_that_attend_differently_keep_different_tokens():
    """Two layers, two KV heads over 40 tokens: each head looks at its own place; the pool widens
    a single peak to the tokens beside it, and B = 3 keeps exactly those."""
    scores = torch.zeros(2, 2, 40)
    scores[0, 0, 5] = scores[1, 0, 5] = 1.0
    scores[0, 1, 30] = 1.0
    scores[1, 1, 20] = 1.0
    kept = make_method("snapkv", kernel=3).select(scores, budget=3)
    assert kept[0, 0].tolist() == kept[1, 0].tolist() == [4, 5, 6]
    assert kept[0, 1].tolist() == [29, 30, 31]
    assert kept[1, 1].tolist() == [19, 20, 21]


def test_snapkv_decodes_each_heads_own_stored_tokens(tiny_engine):
    engine = tiny_engine("llama")
    docs = engine.encode_documents(DOCUMENTS)
    request = engine.request(QUESTION, docs, "snapkv", {"keep_ratio": 0.2, "window": 4})
    prepared = engine.prepare(request, extra=0)
    budget = math.ceil(0.2 * request.layout.context_len)
    assert prepared.cached_tokens == budget and prepared.cache.length == engine.prefix_len + budget
    assert prepared.recomputed.numel() == 0
    P = engine.prefix_len
    differ = False
    kept_by_head = {}
    for layer in range(engine.ops.shape.num_layers):
        keys, values = align_layer(engine.ops, engine.prefix, [d.layer(layer) for d in docs], request.layout, layer)
        cached_keys, cached_values = prepared.cache.layer(layer)
        for head in range(engine.ops.shape.num_kv_heads):
            # Which stored token each cached key is, found by matching the aligned keys.
            match = (cached_keys[head, P:, None] == keys[head, None, P:]).all(-1)  # [B, N]
            assert torch.all(match.sum(1) == 1)
            tokens = match.float().argmax(1)
            assert torch.equal(cached_values[head, P:], values[head, P + tokens])
            kept_by_head[layer, head] = set(tokens.tolist())
        differ |= kept_by_head[layer, 0] != kept_by_head[layer, 1]
    assert differ, "the heads of some layer keep different tokens"
    union = set().union(*kept_by_head.values())
    assert set(prepared.keep.tolist()) == union


def test_cacheblend_filters_gradually_down_to_r():
    method = make_method("cacheblend", recompute_ratio=0.1, first_ratio=0.3, filter_layers=2)
    assert method.schedule(200, 30) == [(1, 60), (2, 40), (3, 20)]
    assert make_method("cacheblend", recompute_ratio=0.1, filter_layers=0).schedule(200, 30) == [(1, 20)]
    # On a model too shallow for every step, the last layer still ends at r.
    assert method.schedule(200, 3) == [(1, 60), (2, 20)]


def test_cacheblend_recomputes_r_of_the_context_after_the_filter(tiny_engine):
    engine = tiny_engine("llama", layers=5)
    docs = engine.encode_documents(DOCUMENTS)
    out = engine.generate(QUESTION, docs, "cacheblend", recompute_ratio=0.15, max_new_tokens=1)
    n_tokens = sum(d.length for d in docs)
    assert out.stats["recomputed_tokens"] == math.ceil(0.15 * n_tokens)
    assert out.stats["kept_tokens"] == n_tokens


def test_epic_recomputes_the_first_k_tokens_of_every_later_document(tiny_engine):
    engine = tiny_engine("llama")
    docs = engine.encode_documents(DOCUMENTS)
    out = engine.generate(QUESTION, docs, "epic", k=6, max_new_tokens=1)
    assert out.recomputed_per_document == [[], *[list(range(6))] * (len(docs) - 1)]
    # At equal recompute, k spreads B = ceil(ρN) over the documents after the first.
    n_tokens = sum(d.length for d in docs)
    k = math.ceil(math.ceil(0.15 * n_tokens) / (len(docs) - 1))
    equal = engine.generate(QUESTION, docs, "epic", recompute_ratio=0.15, max_new_tokens=1)
    assert equal.recomputed_per_document == [[], *[list(range(k))] * (len(docs) - 1)]
    assert 0 <= equal.stats["recomputed_tokens"] - math.ceil(0.15 * n_tokens) < len(docs) - 1


def test_methods_declare_what_they_do():
    assert {name for name in METHODS if method_info(name).sparse} == {"snapkv", "samkv", "samkv-question"}
    assert {name for name in METHODS if not method_info(name).recomputes} == {"naive", "snapkv"}
    assert method_info("epic").params == {"k": 16, "recompute_ratio": None}
    with pytest.raises(UnknownMethod, match="unknown method 'magic'"):
        method_info("magic")


def test_samkv_question_is_samkv_without_the_complementary_term(tiny_engine):
    engine = tiny_engine("llama")
    docs = engine.encode_documents(DOCUMENTS)
    question_only = engine.select(QUESTION, docs, "samkv-question", keep_ratio=0.3, block_size=4)
    assert torch.equal(question_only, engine.select(QUESTION, docs, "samkv", keep_ratio=0.3, block_size=4,
                                                    complement=False))
