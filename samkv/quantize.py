"""Weight-only int8 linear layers, applied to a loaded model (`SAMKV_WEIGHTS=int8`).

Decoding one token at a time on a CPU is bound by reading the weights: int8 weights are a
quarter of float32's bytes. The product is PyTorch's own `aten._weight_int8pack_mm` (what
gpt-fast uses for int8 weight-only decoding on the CPU), whose vectorised kernel takes
bfloat16 activations; activations are rounded to bfloat16 on the way in, the residual stream
stays in the model's dtype.

Every row of the output depends on its own input row only (no activation scales shared across
tokens, unlike dynamic quantisation), so a document's stored KV and a full prefill of the same
tokens agree, and the engine's reuse self-check still holds.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

logger = logging.getLogger(__name__)

WEIGHTS = ("float", "int8")
# Above this many rows (tokens) the packed kernel is slower than a float32 GEMM on the
# dequantised weight (a prefill, a document's encoding); both round the same way.
PACKED_MAX_ROWS = 64


class Int8Linear(nn.Module):
    """A linear layer whose weight is int8 with one scale per output feature."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach().float()  # [out, in]
        # Symmetric per-output-channel scales: 127 is the row's largest magnitude.
        scales = weight.abs().amax(dim=1).clamp_min(1e-12) / 127  # [out]
        quantized = torch.round(weight / scales[:, None]).clamp(-127, 127).to(torch.int8)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight_int8", quantized)  # [out, in]
        self.register_buffer("scales", scales.to(torch.bfloat16))  # [out]
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).to(torch.bfloat16)  # [T, in]
        if x.device.type == "cpu" and rows.shape[0] <= PACKED_MAX_ROWS:
            out = torch.ops.aten._weight_int8pack_mm(rows, self.weight_int8, self.scales)  # [T, out] bf16
        else:
            # The same products in float32, rounded to bfloat16 like the packed kernel's output.
            out = (F.linear(rows.float(), self.weight_int8.float()) * self.scales.float()).to(torch.bfloat16)
        out = out.to(x.dtype)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weights"


def quantize_weights(model: PreTrainedModel, weights: str) -> int:
    """Replaces the decoder layers' linear layers and `lm_head` of `model` by `Int8Linear` when
    `weights` is "int8" ("float" leaves the model as it is); returns the number replaced.

    The embeddings stay in float: `lm_head` gets its own int8 copy when the two are tied.
    """
    if weights not in WEIGHTS:
        raise ValueError(f"unknown weights {weights!r}; expected one of {', '.join(WEIGHTS)}")
    if weights == "float":
        return 0
    targets = [
        (parent, name, child)
        for parent in [*model.model.layers.modules(), model]
        for name, child in parent.named_children()
        if isinstance(child, nn.Linear) and (parent is not model or name == "lm_head")
    ]
    for parent, name, child in targets:
        setattr(parent, name, Int8Linear(child))
    logger.info("int8 weight-only: %d linear layers quantised", len(targets))
    return len(targets)
