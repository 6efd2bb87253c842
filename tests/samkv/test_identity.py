"""Reuse with everything recomputed (or one document) must reproduce a full prefill exactly."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import DOCUMENTS

QUESTION = "What is the vault code at the Oriel bank?"
FAMILIES = ["llama", "llama-scaled-rope", "qwen2"]


def _max_diff(engine, docs, method, **params):
    full = engine.question_logits(QUESTION, docs, method="full")
    other = engine.question_logits(QUESTION, docs, method=method, **params)
    return float((full - other).abs().max() / full.abs().max())


@pytest.mark.parametrize("family", FAMILIES)
def test_naive_with_one_document_equals_full(tiny_engine, family):
    engine = tiny_engine(family)
    doc = engine.encode_document(DOCUMENTS[2])
    assert _max_diff(engine, [doc], "naive") < 1e-5


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(
    "method, params",
    [
        ("samkv", {"keep_ratio": 1.0}),
        ("samkv", {"keep_ratio": 1.0, "complement_mode": "reprobe", "complement_weight": 0.5}),
        ("samkv", {"keep_ratio": 1.0, "complement_mode": "entity", "complement_weight": 0.5}),
        ("cacheblend", {"recompute_ratio": 1.0}),
        ("epic", {"k": 10_000}),
    ],
)
def test_full_recompute_equals_full_on_several_documents(tiny_engine, family, method, params):
    engine = tiny_engine(family)
    docs = engine.encode_documents(DOCUMENTS)
    assert _max_diff(engine, docs, method, **params) < 1e-5


def test_naive_differs_from_full_on_several_documents(tiny_engine):
    """The identities above are not vacuous: without recompute, later documents lack cross-attention."""
    engine = tiny_engine("llama")
    docs = engine.encode_documents(DOCUMENTS)
    assert _max_diff(engine, docs, "naive") > 1e-3


def test_embedded_model_identities(embedded_engine):
    docs = embedded_engine.encode_documents(DOCUMENTS[:3])
    assert _max_diff(embedded_engine, docs[:1], "naive") < 1e-4
    assert _max_diff(embedded_engine, docs, "samkv", keep_ratio=1.0) < 1e-4
    assert _max_diff(embedded_engine, docs, "cacheblend", recompute_ratio=1.0) < 1e-4


def test_batched_encoding_equals_one_by_one(tiny_engine):
    engine = tiny_engine("llama")
    together = engine.encode_documents(DOCUMENTS[:2])
    for text, batched in zip(DOCUMENTS[:2], together):
        alone = engine.encode_document(text)
        assert torch.equal(alone.token_ids, batched.token_ids)
        torch.testing.assert_close(alone.keys, batched.keys, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(alone.values, batched.values, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(alone.summary_queries, batched.summary_queries, atol=1e-5, rtol=1e-4)
