"""`snapkv`: per layer and KV head, the context tokens the question's last tokens attend to most.

As in SnapKV (Li et al., 2024): the question is prefilled over the stored contexts; at every
layer, the attention of its last `window` tokens (the observation window) on each context token
is summed over the window, averaged over the query heads sharing a KV head, and smoothed with a
1-D pool of width `kernel`; each KV head of each layer keeps its top B = ceil(ρN) tokens over
all contexts together. Different heads keep different tokens; all keep B, so the decoding cache
stays one tensor. The stored KV of the kept tokens is decoded from; nothing is recomputed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from samkv.assembly import Plan
from samkv.methods.base import Method, PlanContext, check_ratio, nothing, require
from samkv.methods.observe import observe
from samkv.selection import budget_of

POOLINGS = ("max", "avg")


@dataclass(frozen=True)
class SnapKV(Method):
    name = "snapkv"
    sparse = True
    keep_ratio: float = 0.15
    window: int = 32  # the paper's observation window; a shorter question is observed whole
    kernel: int = 7
    pooling: str = "max"

    def __post_init__(self) -> None:
        check_ratio("keep_ratio", self.keep_ratio)
        require(isinstance(self.window, int) and self.window >= 1, "window must be a positive integer")
        require(isinstance(self.kernel, int) and self.kernel >= 1 and self.kernel % 2 == 1,
                f"kernel must be a positive odd integer, got {self.kernel!r}")
        require(self.pooling in POOLINGS, f"pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")

    def plan(self, context: PlanContext) -> Plan:
        with context.clock.stage("probe"):
            scores = window_attention(context, self.window)
        head_keep = self.select(scores, budget_of(self.keep_ratio, context.layout.context_len))
        return Plan(keep=torch.unique(head_keep), recompute=nothing(), head_keep=head_keep)

    def select(self, scores: torch.Tensor, budget: int) -> torch.Tensor:
        """[layers, KVH, B] sorted context indices each head keeps, from scores [layers, KVH, N]."""
        layers, heads, length = scores.shape
        if length == 0 or budget == 0:
            return torch.empty(layers, heads, 0, dtype=torch.long)
        flat = scores.reshape(layers * heads, 1, length)
        pad = self.kernel // 2
        if self.pooling == "max":
            pooled = F.max_pool1d(flat, self.kernel, stride=1, padding=pad)
        else:
            pooled = F.avg_pool1d(flat, self.kernel, stride=1, padding=pad, count_include_pad=False)
        top = torch.topk(pooled.reshape(layers, heads, length), budget, dim=-1).indices
        return top.sort(dim=-1).values


@torch.inference_mode()
def window_attention(context: PlanContext, window: int) -> torch.Tensor:
    """[layers, KVH, N]: attention of the question's last `window` tokens on each context token,
    summed over the window and averaged over each KV head's query heads."""
    ops, layout = context.ops, context.layout
    P, N = layout.prefix_len, layout.context_len
    ids = context.question_ids
    T = int(ids.numel())
    positions = layout.question_start + torch.arange(T)
    mask = torch.cat([torch.ones(T, P + N, dtype=torch.bool), torch.ones(T, T, dtype=torch.bool).tril()], dim=1)
    kv_heads = ops.shape.num_kv_heads
    scores = torch.zeros(context.num_layers, kv_heads, N)
    for seen in observe(context, ids, positions, mask, context.num_layers - 1):
        on_context = seen.probs[:, T - min(window, T) :, P : P + N].float().sum(1)  # [H, N]
        scores[seen.layer] = on_context.reshape(kv_heads, -1, N).mean(1).cpu()
    return scores
