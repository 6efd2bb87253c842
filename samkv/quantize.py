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
# What a method's probe runs on: the model's own blocks, or int8 copies of them (int8_blocks).
PROBE_WEIGHTS = ("model", "int8")
# Above this many rows (tokens) the packed kernel is no faster than a float32 GEMM on the
# dequantised weight, and far slower on a long prefill or a document's encoding
# (scripts/int8_product_rows.py); both round the same way.
PACKED_MAX_ROWS = 64


class Int8Linear(nn.Module):
    """A linear layer whose weight is int8 with one scale per output feature.

    Built from one or more linear layers over the same input, stacked along the output: one
    call of the kernel computes all of them (`split_sizes` says where each one's outputs are).
    A stacked row is quantised exactly as it would be alone, since every scale is its own row's.
    """

    def __init__(self, *linears: nn.Linear) -> None:
        super().__init__()
        if not linears or len({linear.in_features for linear in linears}) != 1:
            raise ValueError("Int8Linear stacks one or more linear layers with the same input size")
        weight = torch.cat([linear.weight.detach().float() for linear in linears])  # [out, in]
        # Symmetric per-output-channel scales: 127 is the row's largest magnitude.
        scales = weight.abs().amax(dim=1).clamp_min(1e-12) / 127  # [out]
        quantized = torch.round(weight / scales[:, None]).clamp(-127, 127).to(torch.int8)
        self.in_features, self.out_features = linears[0].in_features, int(weight.shape[0])
        self.split_sizes = [linear.out_features for linear in linears]
        self.register_buffer("weight_int8", quantized)  # [out, in]
        self.register_buffer("scales", scales.to(torch.bfloat16))  # [out]
        biases = [linear.bias for linear in linears]
        if all(bias is None for bias in biases):
            self.bias = None
        else:
            stacked = torch.cat([
                torch.zeros(linear.out_features, dtype=linear.weight.dtype) if bias is None else bias.detach()
                for linear, bias in zip(linears, biases)
            ])
            self.bias = nn.Parameter(stacked, requires_grad=False)

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

    def parts(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The outputs of each stacked layer, in the order they were given."""
        return self(x).split(self.split_sizes, dim=-1)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weights"


class Int8MLP(nn.Module):
    """A gated MLP (Llama, Mistral, Qwen2: down(act(gate(x)) * up(x))) with int8 weights, its
    gate and up projections stacked into one product."""

    def __init__(self, mlp: nn.Module) -> None:
        super().__init__()
        self.gate_up_proj = Int8Linear(mlp.gate_proj, mlp.up_proj)
        self.down_proj = Int8Linear(mlp.down_proj)
        self.act_fn = mlp.act_fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj.parts(x)
        return self.down_proj(self.act_fn(gate) * up)


def quantize_weights(model: PreTrainedModel, weights: str) -> int:
    """Makes the decoder layers' linear layers and `lm_head` of `model` int8 when `weights` is
    "int8" ("float" leaves the model as it is); returns the number of int8 products per token.

    Decoding one token is a long series of small products, so the projections that read the
    same input are stacked into one: each attention's query, key and value projections become
    its `qkv_proj` (which `samkv.layers.ModelOps` uses when present; the engine never calls the
    Hugging Face forward, which would look for the three), each MLP an `Int8MLP`.
    The embeddings stay in float: `lm_head` gets its own int8 copy when the two are tied.
    """
    if weights not in WEIGHTS:
        raise ValueError(f"unknown weights {weights!r}; expected one of {', '.join(WEIGHTS)}")
    if weights == "float":
        return 0
    for block in model.model.layers:
        attn = block.self_attn
        attn.qkv_proj, attn.o_proj = _int8_attention(attn)
        del attn.q_proj, attn.k_proj, attn.v_proj
        block.mlp = Int8MLP(block.mlp)
    model.lm_head = Int8Linear(model.lm_head)
    products = sum(isinstance(module, Int8Linear) for module in model.modules())
    logger.info("int8 weight-only: %d stacked linear products", products)
    return products


def is_int8(model: PreTrainedModel) -> bool:
    """Whether `quantize_weights` made the model's linear layers int8."""
    return any(isinstance(module, Int8Linear) for module in model.model.layers.modules())


def _int8_attention(attn: nn.Module) -> tuple[Int8Linear, Int8Linear]:
    """The stacked query/key/value product and the output product of an attention, in int8."""
    return Int8Linear(attn.q_proj, attn.k_proj, attn.v_proj), Int8Linear(attn.o_proj)


class Int8Block(nn.Module):
    """An int8 copy of a float decoder block, beside it: the same norms (shared, not copied),
    its linear layers as `quantize_weights` would make them. The block itself is unchanged."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.input_layernorm = block.input_layernorm
        self.post_attention_layernorm = block.post_attention_layernorm
        self.self_attn = nn.Module()
        self.self_attn.qkv_proj, self.self_attn.o_proj = _int8_attention(block.self_attn)
        self.mlp = Int8MLP(block.mlp)


def int8_blocks(model: PreTrainedModel) -> nn.ModuleList:
    """Int8 copies of a float model's decoder blocks, for passes whose output is only looked at
    (a method's probe): they read a quarter of the bytes, and the model's own blocks, which
    encode, recompute and decode, stay as they are."""
    if is_int8(model):
        raise ValueError("the model's linear layers are int8 already")
    return nn.ModuleList(Int8Block(block) for block in model.model.layers)
