"""int8 weight-only linear layers: exact reuse still holds, and the small model answers with them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from samkv import Engine, ModelLoadError
from samkv.quantize import PACKED_MAX_ROWS, Int8Linear, Int8MLP
from samkv.runtime import load_model

SMALL_MODEL = "smollm2-135m-instruct"


def test_an_int8_row_depends_on_its_own_input_only():
    torch.manual_seed(0)
    linear = nn.Linear(96, 80)
    quantized = Int8Linear(linear)
    for rows in (5, PACKED_MAX_ROWS + 40):  # the packed kernel, then the dequantised product
        x = torch.randn(rows, 96)
        together = quantized(x)
        assert torch.equal(together[:3], quantized(x[:3]))
        assert torch.equal(together[-1:], quantized(x[-1:]))
        reference = linear(x)
        assert (together - reference).abs().max() <= 0.05 * reference.abs().max()


def test_stacked_layers_are_quantised_and_computed_as_each_alone():
    torch.manual_seed(0)
    query, key = nn.Linear(64, 48), nn.Linear(64, 16, bias=False)
    stacked, alone = Int8Linear(query, key), [Int8Linear(query), Int8Linear(key)]
    assert stacked.split_sizes == [48, 16]
    assert torch.equal(stacked.weight_int8, torch.cat([a.weight_int8 for a in alone]))
    assert torch.equal(stacked.scales, torch.cat([a.scales for a in alone]))
    for rows in (1, PACKED_MAX_ROWS + 8):
        x = torch.randn(rows, 64)
        q, k = stacked.parts(x)
        torch.testing.assert_close(q, alone[0](x), rtol=1e-2, atol=1e-3)
        torch.testing.assert_close(k, alone[1](x), rtol=1e-2, atol=1e-3)
    with pytest.raises(ValueError, match="same input size"):
        Int8Linear(query, nn.Linear(32, 8))


class _GatedMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = nn.Linear(32, 80), nn.Linear(32, 80), nn.Linear(80, 32)
        self.act_fn = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


def test_the_int8_mlp_computes_the_gated_mlp():
    torch.manual_seed(0)
    mlp = _GatedMLP()
    x = torch.randn(5, 32)
    reference, quantized = mlp(x), Int8MLP(mlp)(x)
    assert (quantized - reference).abs().max() <= 0.05 * reference.abs().max()


def test_the_small_model_with_int8_weights_passes_the_self_check_and_answers(embedded_engine):
    engine = Engine(load_model(SMALL_MODEL, device="cpu", weights="int8"))
    assert engine.reuse_refusal is None
    assert engine.self_check() <= 1e-4
    model = engine.loaded.model
    assert isinstance(model.lm_head, Int8Linear)
    assert all(isinstance(block.mlp, Int8MLP) and isinstance(block.self_attn.qkv_proj, Int8Linear)
               for block in model.model.layers)
    # Caches made with other weights are other caches.
    assert engine.fingerprint != embedded_engine.fingerprint
    document = "The lighthouse on Carrow Point has been kept by Marta Quint since 1987."
    out = engine.generate("Who keeps the lighthouse on Carrow Point?", engine.encode_documents([document]),
                          "samkv", max_new_tokens=12)
    assert out.text.strip()
    assert out.stats["generated_tokens"] >= 1


def test_unknown_weights_are_refused_before_loading():
    with pytest.raises(ModelLoadError, match="unknown weights 'int4'"):
        load_model(SMALL_MODEL, weights="int4")
