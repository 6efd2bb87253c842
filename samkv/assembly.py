"""Assembly of the decoding cache from stored document KV: align, recompute some tokens, keep some.

One loop over layers serves every method: at each layer the stored KV of every document is read
(one layer at a time), rotated to its positions in the prompt, the tokens the plan recomputes get
fresh KV from their hidden states, and the tokens the plan keeps are copied into the cache.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from samkv.cache import KVCache, KVMeter
from samkv.document import DocumentSource, LayerKV
from samkv.layers import ModelOps
from samkv.layout import Layout

# (fresh keys, fresh values, stored keys, stored values), each [KVH, R, d] -> rows of R to go on with
NarrowFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Narrowing:
    """After computing `layer` for the recomputed tokens, `choose` keeps only some of them."""

    layer: int
    choose: NarrowFn


@dataclass(frozen=True)
class Plan:
    """What a method asks of the assembly: which context tokens to recompute and which to keep."""

    keep: torch.Tensor  # [K] sorted context indices kept in the decoding cache
    recompute: torch.Tensor  # [R] sorted context indices recomputed from the first layer
    narrowing: Narrowing | None = None
    reads_stored: bool = True  # False only when every token is recomputed (a full prefill)


def visibility_mask(layout: Layout, rows: torch.Tensor, shared: torch.Tensor) -> torch.Tensor:
    """[R, |P| + N]: what recomputed context tokens `rows` attend to.

    A token sees, causally, the prefix, every `shared` context token (bool [N]) and every token
    of its own document; so in SamKV the tokens dropped from other documents stay invisible.
    """
    prefix = torch.ones(layout.prefix_len, dtype=torch.bool)
    col_shared = torch.cat([prefix, shared])  # [P + N]
    col_doc = torch.cat([torch.full((layout.prefix_len,), -1), layout.doc_of])
    col_pos = torch.arange(layout.prefix_len + layout.context_len)
    row_pos, row_doc = layout.positions[rows], layout.doc_of[rows]
    causal = col_pos[None, :] <= row_pos[:, None]
    return causal & (col_shared[None, :] | (col_doc[None, :] == row_doc[:, None]))


def align_layer(
    ops: ModelOps, prefix: KVCache, parts: list[LayerKV], layout: Layout, layer: int, extra: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys (rotated to their prompt positions) and values [KVH, |P| + N + extra, d] of one layer.

    The last `extra` slots are left for the caller's own tokens.
    """
    shape = ops.shape
    size = layout.prefix_len + layout.context_len + extra
    keys = torch.empty(shape.num_kv_heads, size, shape.head_dim, dtype=ops.dtype, device=ops.device)
    values = torch.empty_like(keys)
    prefix_keys, prefix_values = prefix.layer(layer)
    keys[:, : layout.prefix_len] = prefix_keys
    values[:, : layout.prefix_len] = prefix_values
    start = layout.prefix_len
    for part in parts:
        end = start + part.keys.shape[1]
        keys[:, start:end] = part.keys.to(ops.device, ops.dtype)
        values[:, start:end] = part.values.to(ops.device, ops.dtype)
        start = end
    context = slice(layout.prefix_len, layout.prefix_len + layout.context_len)
    keys[:, context] = ops.rope(keys[:, context], layout.positions)
    return keys, values


@torch.inference_mode()
def assemble(
    ops: ModelOps,
    prefix: KVCache,
    source: DocumentSource,
    layout: Layout,
    token_ids: torch.Tensor,
    plan: Plan,
    cache: KVCache,
    meter: KVMeter,
) -> int:
    """Fills `cache` with [P ; kept context tokens] for every layer; returns the tokens recomputed.

    token_ids [N] are the context's ids (needed for the recomputed tokens' embeddings).
    """
    shape = ops.shape
    P, N = layout.prefix_len, layout.context_len
    rows = plan.recompute
    if not plan.reads_stored and rows.numel() != N:
        raise ValueError("a plan that reads no stored KV must recompute every context token")
    keep_slots = torch.cat([torch.arange(P), P + plan.keep]).to(ops.device)
    shared = torch.zeros(N, dtype=torch.bool)
    shared[plan.keep] = True
    mask = visibility_mask(layout, rows, shared).to(ops.device) if rows.numel() else None
    hidden = ops.embed(token_ids[rows]) if rows.numel() else None  # [R, hidden]
    for layer in range(shape.num_layers):
        if plan.reads_stored:
            keys, values = align_layer(ops, prefix, source.read_layer(layer), layout, layer)
        else:
            keys = torch.empty(shape.num_kv_heads, P + N, shape.head_dim, dtype=ops.dtype, device=ops.device)
            values = torch.empty_like(keys)
            keys[:, :P], values[:, :P] = prefix.layer(layer)
        meter.hold(keys, values)
        if rows.numel():
            slots = (P + rows).to(ops.device)
            q, k, v = ops.qkv(layer, hidden)
            positions = layout.positions[rows].to(ops.device)
            q, k = ops.rope(q, positions), ops.rope(k, positions)
            chosen = None
            if plan.narrowing is not None and layer == plan.narrowing.layer:
                chosen = plan.narrowing.choose(k, v, keys[:, slots], values[:, slots])
            keys[:, slots], values[:, slots] = k, v
            hidden = ops.finish(layer, hidden, ops.attend(q, keys, values, mask))
            if chosen is not None:
                chosen = chosen.sort().values
                hidden, rows = hidden[chosen.to(ops.device)], rows[chosen.cpu()]
                mask = visibility_mask(layout, rows, shared).to(ops.device) if rows.numel() else None
        cache.write_layer(layer, 0, keys[:, keep_slots], values[:, keep_slots])
        meter.release(keys, values)
    cache.length = P + int(plan.keep.numel())
    return int(rows.numel())
