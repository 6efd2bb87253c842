"""What a request spends beyond the model's own compute: rotary tables, repeated KV, stored reads."""

from __future__ import annotations

import pytest
import torch

from samkv.document import InMemorySource
from tests.conftest import DOCUMENTS

QUESTION = "What is the vault code at the Oriel bank?"
METHODS = [("samkv", {"keep_ratio": 0.3, "block_size": 4}), ("snapkv", {"keep_ratio": 0.3}), ("cacheblend", {})]


def test_rotary_angles_are_computed_once_not_per_layer(tiny_engine, monkeypatch):
    engine = tiny_engine("llama")
    docs = engine.encode_documents(DOCUMENTS)
    engine.generate(QUESTION, docs, "samkv", max_new_tokens=2)  # the table now spans the prompt
    rotary = engine.ops.decoder.rotary_emb
    calls = []
    original = rotary.forward

    def counted(x, position_ids):
        calls.append(position_ids.shape[-1])
        return original(x, position_ids)

    monkeypatch.setattr(rotary, "forward", counted)
    for method, params in METHODS:
        engine.generate(QUESTION, docs, method, max_new_tokens=2, **params)
    assert calls == []


@pytest.mark.parametrize("method, params", METHODS)
def test_no_key_or_value_is_repeated_per_query_head(tiny_engine, monkeypatch, method, params):
    """Grouped-query attention reads each KV head once for its group of query heads."""
    engine = tiny_engine("llama")
    assert engine.ops.shape.num_heads > engine.ops.shape.num_kv_heads
    docs = engine.encode_documents(DOCUMENTS)
    original = torch.Tensor.repeat_interleave

    def refuse(self, *args, **kwargs):
        if self.is_floating_point():
            raise AssertionError("KV repeated per query head")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "repeat_interleave", refuse)
    engine.generate(QUESTION, docs, method, max_new_tokens=2, **params)


class CountingSource:
    """Documents in memory whose layer reads are counted."""

    def __init__(self, documents) -> None:
        self.inner = InMemorySource(documents)
        self.reads: list[int] = []

    @property
    def documents(self):
        return self.inner.documents

    def read_layer(self, layer):
        self.reads.append(layer)
        return self.inner.read_layer(layer)


@pytest.mark.parametrize("method, params", METHODS + [
    ("samkv", {"keep_ratio": 0.3, "complement_mode": "reprobe", "complement_weight": 0.5}),
    ("naive", {}), ("epic", {}),
])
def test_each_stored_layer_is_read_once_per_request(tiny_engine, method, params):
    engine = tiny_engine("llama", layers=4)
    source = CountingSource(engine.encode_documents(DOCUMENTS))
    engine.generate(QUESTION, source, method, max_new_tokens=2, **params)
    assert sorted(source.reads) == list(range(4))
