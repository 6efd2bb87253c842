"""What a request spends beyond the model's own compute: rotary tables, repeated KV, stored reads."""

from __future__ import annotations

import threading

import pytest
import torch

from samkv.assembly import DocumentAttention
from samkv.cache import KVMeter
from samkv.document import InMemorySource
from samkv.layout import Layout
from samkv.request_source import RequestSource
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
    """Documents in memory whose layer reads are counted, and may be held until a test lets them go."""

    def __init__(self, documents) -> None:
        self.inner = InMemorySource(documents)
        self.reads: list[int] = []
        self.documents_read: list[tuple[int, tuple[int, ...] | None]] = []  # (layer, documents)
        self.gates: dict[int, threading.Event] = {}
        self.waiting = threading.Event()  # set once a gated read has begun

    @property
    def documents(self):
        return self.inner.documents

    def read_layer(self, layer, documents=None):
        if layer in self.gates:
            self.waiting.set()
            assert self.gates[layer].wait(10), "the test never let this read go"
        self.reads.append(layer)
        self.documents_read.append((layer, None if documents is None else tuple(documents)))
        return self.inner.read_layer(layer, documents)


@pytest.mark.parametrize("method, params", METHODS + [
    ("samkv", {"keep_ratio": 0.3, "complement_mode": "reprobe", "complement_weight": 0.5}),
    ("naive", {}), ("epic", {}),
])
def test_each_stored_layer_is_read_once_per_request_when_the_probes_layers_are_kept(tiny_engine, method, params):
    engine = tiny_engine("llama", layers=4)
    source = CountingSource(engine.encode_documents(DOCUMENTS))
    engine.probe_hold_bytes = None  # no bound: every layer a probe reads is kept for the assembly
    try:
        engine.generate(QUESTION, source, method, max_new_tokens=2, **params)
    finally:
        engine.probe_hold_bytes = 0
    assert sorted(source.reads) == list(range(4))


def test_the_next_layer_is_read_while_the_caller_works_on_this_one(tiny_engine):
    engine = tiny_engine("llama", layers=4)
    counting = CountingSource(engine.encode_documents(DOCUMENTS))
    counting.gates[2] = threading.Event()
    reads = RequestSource(counting, num_layers=4, meter=KVMeter())
    try:
        reads.read_layer(0)
        reads.read_layer(1)
        assert counting.waiting.wait(10), "layer 2 is read before it is asked for"
        counting.gates[2].set()
        for layer in (2, 3):
            want = counting.inner.read_layer(layer)
            assert all(torch.equal(g.keys, w.keys) for g, w in zip(reads.read_layer(layer), want))
        assert counting.reads == [0, 1, 2, 3]
    finally:
        counting.gates[2].set()
        reads.close()


def test_a_pass_over_some_documents_reads_only_them(tiny_engine):
    engine = tiny_engine("llama", layers=4)
    counting = CountingSource(engine.encode_documents(DOCUMENTS))
    reads = RequestSource(counting, num_layers=4, meter=KVMeter(), hold_bytes=0)
    try:
        reads.read_layer(0)
        reads.read_layer(1)  # a probe over every document, which reads layer 2 ahead
        with reads.final_pass():
            for layer in range(4):
                got = reads.read_layer(layer, [0, 2])
                want = counting.inner.read_layer(layer, [0, 2])
                assert all(torch.equal(g.keys, w.keys) for g, w in zip(got, want, strict=True))
    finally:
        reads.close()
    # One worker reads in order; layer 2, read ahead for every document, serves the pair.
    assert counting.documents_read == [(0, None), (1, None), (2, None), (0, (0, 2)), (1, (0, 2)), (3, (0, 2))]


def _layer_bytes(parts) -> int:
    return sum(t.numel() * t.element_size() for part in parts for t in (part.keys, part.values))


@pytest.mark.parametrize("hold_bytes", [None, 0])
def test_the_meter_counts_what_is_kept_between_passes(tiny_engine, hold_bytes):
    engine = tiny_engine("llama", layers=4)
    counting = CountingSource(engine.encode_documents(DOCUMENTS))
    meter = KVMeter()
    reads = RequestSource(counting, num_layers=4, meter=meter, hold_bytes=hold_bytes)
    layer_bytes = _layer_bytes(counting.inner.read_layer(0))
    try:
        reads.read_layer(0)
        reads.read_layer(1)  # a probe's two layers
        assert meter.current == (2 * layer_bytes if hold_bytes is None else 0)
        with reads.final_pass():
            for layer in range(4):
                reads.read_layer(layer)
    finally:
        reads.close()
    assert meter.current == 0
    assert meter.peak == (2 * layer_bytes if hold_bytes is None else layer_bytes)
    # Kept layers are served again without a read; with nothing kept, the assembly reads them again.
    assert sorted(counting.reads) == ([0, 1, 2, 3] if hold_bytes is None else [0, 0, 1, 1, 2, 3])


def test_a_negative_hold_bound_is_refused():
    with pytest.raises(ValueError, match="hold_bytes"):
        RequestSource(CountingSource([]), num_layers=1, meter=KVMeter(), hold_bytes=-1)


@pytest.mark.parametrize("every_shared", [False, True])
def test_the_recompute_attends_to_no_key_after_its_documents_last_row(tiny_engine, monkeypatch, every_shared):
    """Causal attention reads nothing after a document's last recomputed token, so its keys stop there."""
    engine = tiny_engine("llama")
    ops, shape = engine.ops, engine.ops.shape
    P = 4
    layout = Layout.of(P, [10, 12])
    rows = torch.tensor([3, 5, 11, 14])  # last rows: 5 in the first document, 14 (its 5th token) in the second
    shared = torch.ones(22, dtype=torch.bool) if every_shared else torch.zeros(22, dtype=torch.bool)
    shared[[2, 7]] = True  # kept tokens of the first document
    attention = DocumentAttention(layout, rows, shared, ops.device)
    columns = []
    original = ops.attend

    def counted(q, k, v, mask):
        columns.append(int(k.shape[1]))
        return original(q, k, v, mask)

    monkeypatch.setattr(ops, "attend", counted)
    q = torch.randn(shape.num_heads, 4, shape.head_dim)
    keys = torch.randn(shape.num_kv_heads, P + 22, shape.head_dim)
    values = torch.randn_like(keys)
    out = attention(ops, q, keys, values, KVMeter())
    if every_shared:  # every earlier token is seen: the prompt up to the last row
        assert columns == [P + 6, P + 15]
    else:  # the prefix, the kept tokens before the document, its own tokens up to the last row
        assert columns == [P + 6, P + 2 + 5]
    # Dropping what lies after the last row changes nothing: it was masked.
    keys[:, P + 15:] = float("nan")
    values[:, P + 15:] = float("nan")
    assert torch.equal(attention(ops, q, keys, values, KVMeter()), out)
