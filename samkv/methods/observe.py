"""Evidence any method may gather: new tokens prefilled over the stored contexts, layer by layer.

The tokens (a question, a probe) attend over [P ; D_1 … D_n] as stored, aligned to their
prompt positions and not recomputed; at each layer the caller sees the attention probabilities
before the tokens' hidden states move on to the next layer. The tokens' own projections and MLPs
run on the context's `probe_ops` (the engine's `probe_weights`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from samkv.assembly import align_layer
from samkv.document import LayerKV
from samkv.methods.base import PlanContext


@dataclass(frozen=True)
class Observation:
    """One layer of the pass."""

    layer: int
    probs: torch.Tensor  # [H, T, P + N + T] attention of the new tokens, after softmax
    keys: torch.Tensor  # [KVH, P + N + T, d] aligned keys of the layer, the new tokens' last
    parts: list[LayerKV]  # the stored layer of every document, as read
    queries: torch.Tensor  # [H, T, d] the new tokens' queries, before RoPE


@torch.inference_mode()
def observe(
    context: PlanContext, token_ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, last_layer: int
) -> Iterator[Observation]:
    """Prefills token_ids [T] at positions [T] with mask [T, P + N + T] up to `last_layer` included.

    Layers past the last one the caller needs cannot change what it sees, so the pass stops there.
    """
    ops, layout, meter = context.probe_ops, context.layout, context.meter
    P, N, T = layout.prefix_len, layout.context_len, int(token_ids.shape[0])
    positions = positions.to(ops.device)
    mask = mask.to(ops.device)
    hidden = ops.embed(token_ids)  # [T, hidden]
    for layer in range(last_layer + 1):
        parts = context.source.read_layer(layer)
        keys, values = align_layer(ops, context.prefix, parts, layout, layer, extra=T)
        meter.hold(keys, values)
        q, k, v = ops.qkv(layer, hidden)
        keys[:, P + N :], values[:, P + N :] = ops.rope(k, positions), v
        probs = ops.attention_probs(ops.rope(q, positions), keys, mask)  # [H, T, P + N + T]
        yield Observation(layer, probs, keys, parts, q)
        if layer < last_layer:  # the last layer's output feeds nothing the caller sees
            hidden = ops.finish(layer, hidden, ops.weigh_values(probs, values))
        meter.release(keys, values)
