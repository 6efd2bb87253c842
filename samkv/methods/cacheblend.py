"""`cacheblend`: recompute every token up to a check layer, then only those whose KV deviated most.

As in CacheBlend (and LMCache's blender defaults): at the check layer every context token's
fresh KV is compared with its stored KV (L2); the `recompute_ratio` share that deviates most is
recomputed in the later layers, every other token keeps its stored KV.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from samkv.assembly import Narrowing, Plan
from samkv.methods.base import Method, PlanContext, check_ratio, require
from samkv.selection import budget_of


@dataclass(frozen=True)
class CacheBlend(Method):
    name = "cacheblend"
    recomputes = True
    recompute_ratio: float = 0.15
    check_layer: int = 1

    def __post_init__(self) -> None:
        check_ratio("recompute_ratio", self.recompute_ratio)
        require(
            isinstance(self.check_layer, int) and self.check_layer >= 0,
            f"check_layer must be a non-negative integer, got {self.check_layer!r}",
        )

    def plan(self, context: PlanContext) -> Plan:
        require(
            self.check_layer < context.num_layers,
            f"check_layer must be below the model's {context.num_layers} layers, got {self.check_layer}",
        )
        every = context.layout.all_tokens()
        count = budget_of(self.recompute_ratio, context.layout.context_len)

        def most_deviated(fresh_k, fresh_v, stored_k, stored_v) -> torch.Tensor:
            deviation = (fresh_k - stored_k).float().pow(2).sum((0, 2))
            deviation += (fresh_v - stored_v).float().pow(2).sum((0, 2))  # [N]
            return torch.topk(deviation, count).indices

        return Plan(keep=every, recompute=every, narrowing=Narrowing(self.check_layer, most_deviated))
