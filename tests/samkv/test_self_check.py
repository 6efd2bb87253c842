"""The load-time self-check: reuse must be exact, or the reuse methods are refused."""

from __future__ import annotations

import pytest

from samkv import ReuseRefused, assembly
from tests.conftest import DOCUMENTS


def test_self_check_passes_on_the_embedded_model(embedded_engine):
    assert embedded_engine.reuse_refusal is None
    assert embedded_engine.self_check() < 1e-4


def test_a_misaligned_position_makes_the_engine_refuse_reuse(tiny_engine, monkeypatch):
    engine = tiny_engine("llama")
    original = assembly.align_layer

    def off_by_one(ops, prefix, parts, layout, layer, extra=0, documents=None):
        keys, values = original(ops, prefix, parts, layout, layer, extra, documents)
        context = slice(layout.prefix_len, layout.prefix_len + layout.context_len)
        keys[:, context] = ops.rope(keys[:, context], 1 + 0 * layout.positions)
        return keys, values

    monkeypatch.setattr(assembly, "align_layer", off_by_one)
    difference = engine.self_check()
    assert difference > 1e-3
    docs = [engine.encode_document(DOCUMENTS[0])]
    for method in ("naive", "samkv", "cacheblend", "epic", "snapkv"):
        with pytest.raises(ReuseRefused, match="KV reuse is not exact"):
            engine.generate("Who is the harbour master?", docs, method=method, max_new_tokens=2)
    assert engine.generate("Who is the harbour master?", docs, method="full", max_new_tokens=2).stats
    monkeypatch.undo()
    assert engine.self_check() < 1e-5
    assert engine.reuse_refusal is None
