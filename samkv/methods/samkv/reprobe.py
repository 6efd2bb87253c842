"""SamKV's "reprobe" second stage: the question read again over the first stage's compact cache.

A two-hop question names A; one document links A to a bridge entity B; another holds B's
answer. The question alone never points at the second document; prefilled over the tokens the
first stage kept, its deeper layers have read the bridge, and its queries then score every
stored token.
"""

from __future__ import annotations

import torch

from samkv.assembly import Plan, align_layer, assemble
from samkv.cache import KVCache
from samkv.forward import Recording, forward_tokens
from samkv.methods.base import PlanContext, nothing


@torch.inference_mode()
def reprobe_scores(context: PlanContext, kept: torch.Tensor, layers: range) -> torch.Tensor:
    """[N]: attention of the question, prefilled over [P ; kept tokens' stored KV], on each stored token.

    The attention is taken over every context token (stored keys aligned to their positions),
    normalised over the context, and averaged over heads, question tokens and `layers`.
    """
    ops, layout, meter, question_ids = context.ops, context.layout, context.meter, context.question_ids
    P, N = layout.prefix_len, layout.context_len
    shape = ops.shape
    q_len = int(question_ids.numel())
    compact = KVCache(shape.num_layers, shape.num_kv_heads, shape.head_dim, P + int(kept.numel()) + q_len,
                      ops.dtype, ops.device, meter)
    # Stored KV, not recomputed: the sentence naming the bridge lies inside the document that the
    # question already points at, so its stored KV has read it; recomputing would add only the
    # cross-document attention, at the cost of a second assembly.
    plan = Plan(keep=kept, recompute=nothing())
    assemble(ops, context.prefix, context.source, layout, context.context_ids, plan, compact, meter)
    record = Recording()
    positions = layout.question_start + torch.arange(q_len)
    forward_tokens(ops, compact, question_ids, positions, record=record)
    scores = torch.zeros(N, device=ops.device)
    visible = torch.ones(q_len, N, dtype=torch.bool, device=ops.device)
    for layer in layers:
        keys, values = align_layer(ops, context.prefix, context.source.read_layer(layer), layout, layer)
        meter.hold(keys, values)
        queries = ops.rope(record.queries[layer], positions)
        probs = ops.attention_probs(queries, keys[:, P : P + N], visible)  # [H, T, N]
        scores += probs.mean((0, 1))
        meter.release(keys, values)
    meter.release(compact.keys, compact.values)
    return (scores / max(1, len(layers))).cpu()
