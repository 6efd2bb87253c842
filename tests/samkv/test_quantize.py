"""int8 weight-only linear layers: exact reuse still holds, and the small model answers with them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from samkv import Engine, ModelLoadError
from samkv.quantize import PACKED_MAX_ROWS, Int8Linear
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


def test_the_small_model_with_int8_weights_passes_the_self_check_and_answers(embedded_engine):
    engine = Engine(load_model(SMALL_MODEL, device="cpu", weights="int8"))
    assert engine.reuse_refusal is None
    assert engine.self_check() <= 1e-4
    assert any(isinstance(m, Int8Linear) for m in engine.loaded.model.modules())
    assert isinstance(engine.loaded.model.lm_head, Int8Linear)
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
