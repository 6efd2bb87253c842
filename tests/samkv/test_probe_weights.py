"""SamKV's probe on int8 copies of the layers: the model itself is untouched, so everything that
writes a cache is unchanged, and the probe ranks the context as the float probe does."""

from __future__ import annotations

import pytest
import torch

from samkv import Engine
from samkv.cache import KVMeter
from samkv.layers import ModelOps
from samkv.methods.base import PlanContext
from samkv.methods.samkv.probe import run_probe
from samkv.quantize import Int8Linear, int8_blocks, is_int8
from samkv.runtime import load_model
from samkv.stages import StageClock
from tests.conftest import DOCUMENTS

QUESTION = "Who is the harbour master of Velmora?"


def test_int8_blocks_compute_what_int8_weights_compute_and_leave_the_model_float(tiny_checkpoint):
    path = tiny_checkpoint("qwen2")
    float_model = load_model(path, device="cpu").model
    int8_model = load_model(path, device="cpu", weights="int8").model
    beside = ModelOps(float_model, int8_blocks(float_model))
    quantized = ModelOps(int8_model)
    hidden = torch.randn(5, float_model.config.hidden_size)
    for layer in range(quantized.shape.num_layers):
        for got, expected in zip(beside.qkv(layer, hidden), quantized.qkv(layer, hidden), strict=True):
            assert torch.equal(got, expected)
        attn_out = torch.randn(5, quantized.shape.num_heads * quantized.shape.head_dim)
        assert torch.equal(beside.finish(layer, hidden, attn_out), quantized.finish(layer, hidden, attn_out))
    assert not is_int8(float_model) and is_int8(int8_model)
    assert all(isinstance(block.self_attn.q_proj, torch.nn.Linear) for block in float_model.model.layers)
    assert not any(isinstance(module, Int8Linear) for module in float_model.modules())
    with pytest.raises(ValueError, match="int8 already"):
        int8_blocks(int8_model)


def _probe(engine: Engine, docs, probe_ops):
    request = engine.request(QUESTION, docs, "samkv")
    context = PlanContext(
        engine.ops, engine.prefix, request.source, request.layout, request.context_ids, request.question_ids,
        engine.prompt, request.answer_prefix, KVMeter(), StageClock(), probe_ops,
    )
    return run_probe(context, range(24), True, 8)


def test_the_int8_probe_ranks_as_the_float_probe_and_changes_no_cache(embedded_engine):
    engine = Engine(embedded_engine.loaded, probe_weights="int8")
    assert engine.reuse_refusal is None and engine.self_check() <= 1e-4
    assert engine.probe_ops is not engine.ops
    assert engine.fingerprint == embedded_engine.fingerprint  # stored caches serve both
    docs = embedded_engine.encode_documents(DOCUMENTS)
    full_float = embedded_engine.generate(QUESTION, docs, "full", max_new_tokens=8)
    full_int8_probe = engine.generate(QUESTION, docs, "full", max_new_tokens=8)
    assert full_int8_probe.token_ids == full_float.token_ids

    exact, looked = _probe(engine, docs, engine.ops), _probe(engine, docs, engine.probe_ops)
    budget = max(1, int(0.15 * exact.question.numel()))
    # The other documents' summary queries were stored at encoding: no probe layer computes them.
    assert torch.equal(exact.complement, looked.complement)
    for name in ("question", "neutral"):
        a, b = getattr(exact, name), getattr(looked, name)
        assert not torch.equal(a, b)  # the int8 blocks did run
        assert torch.corrcoef(torch.stack([a.log(), b.log()]))[0, 1] > 0.99
        top_a, top_b = set(a.topk(budget).indices.tolist()), set(b.topk(budget).indices.tolist())
        assert len(top_a & top_b) >= 0.8 * budget
    out = engine.generate(QUESTION, docs, "samkv", max_new_tokens=8)
    assert out.text.strip() and out.stats["probe_ms"] > 0


def test_an_int8_model_probes_on_its_own_layers_and_unknown_probe_weights_are_refused(
    embedded_engine, tiny_checkpoint
):
    int8_engine = Engine(load_model(tiny_checkpoint("qwen2"), device="cpu", weights="int8"),
                         probe_weights="int8", self_check=False)
    assert int8_engine.probe_ops is int8_engine.ops
    with pytest.raises(ValueError, match="unknown probe_weights 'int4'"):
        Engine(embedded_engine.loaded, probe_weights="int4", self_check=False)
