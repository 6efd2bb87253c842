"""Forward passes of new tokens over a KV cache: the shared prefix, the question, each decoded token."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from samkv.cache import KVCache
from samkv.layers import ModelOps


@dataclass
class Recording:
    """Per-layer pre-RoPE keys, values and queries captured during a forward pass."""

    keys: list[torch.Tensor] = field(default_factory=list)  # each [KVH, T, d]
    values: list[torch.Tensor] = field(default_factory=list)  # each [KVH, T, d]
    queries: list[torch.Tensor] = field(default_factory=list)  # each [H, T, d]


def causal_mask(cache_len: int, new: int, device: torch.device) -> torch.Tensor:
    """[new, cache_len + new]: every cached entry visible, causal among the new tokens."""
    visible = torch.ones(new, cache_len + new, dtype=torch.bool, device=device)
    visible[:, cache_len:] = torch.tril(visible[:, cache_len:])
    return visible


@torch.inference_mode()
def forward_tokens(
    ops: ModelOps,
    cache: KVCache,
    token_ids: torch.Tensor,
    positions: torch.Tensor,
    *,
    all_logits: bool = False,
    record: Recording | None = None,
) -> torch.Tensor:
    """Runs token_ids [T] at positions [T] over `cache`, appending their KV to it.

    Every cached entry is visible to the new tokens, which are causal among themselves.
    Returns float32 logits of the last token [1, vocab], or of every token [T, vocab] with
    `all_logits`.
    """
    start, new = cache.length, int(token_ids.shape[0])
    mask = causal_mask(start, new, ops.device) if new > 1 else None
    hidden = ops.embed(token_ids)  # [T, hidden]
    positions = positions.to(ops.device)
    for layer in range(ops.shape.num_layers):
        q, k, v = ops.qkv(layer, hidden)
        if record is not None:
            record.keys.append(k)
            record.values.append(v)
            record.queries.append(q)
        q, k = ops.rope(q, positions), ops.rope(k, positions)
        cache.write_layer(layer, start, k, v)
        keys, values = cache.layer(layer, start + new)
        if layer == ops.shape.num_layers - 1 and not all_logits and new > 1:
            # Only the last token's output is asked for; the others' last output feeds nothing.
            q, hidden = q[:, -1:], hidden[-1:]
            mask = None if mask is None else mask[-1:]
        hidden = ops.finish(layer, hidden, ops.attend(q, keys, values, mask))
    cache.length = start + new
    return ops.logits(hidden if all_logits else hidden[-1:])
