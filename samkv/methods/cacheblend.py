"""`cacheblend`: recompute every token through a check layer, then only those whose KV deviates most.

As in CacheBlend (Yao et al., 2024, §4.3, gradual filtering): at `check_layer` every context
token is recomputed and the `first_ratio` share of the context whose fresh KV deviates most
(L2) from its stored KV is kept on; at each of the next `filter_layers` layers only those are
recomputed, and of them the ones deviating most at that layer go on, the share falling linearly
to r = `recompute_ratio`. Later layers recompute those ceil(rN) tokens; every other token keeps
its stored KV. With filter_layers = 0 the selection is made once, at the check layer (what the
authors' released code and LMCache's blender do).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from samkv.assembly import NarrowFn, Narrowing, Plan
from samkv.methods.base import Method, PlanContext, check_ratio, require
from samkv.selection import budget_of


@dataclass(frozen=True)
class CacheBlend(Method):
    name = "cacheblend"
    recomputes = True
    recompute_ratio: float = 0.15
    check_layer: int = 1
    first_ratio: float | None = None  # r1; default min(1, 2r)
    filter_layers: int = 2

    def __post_init__(self) -> None:
        check_ratio("recompute_ratio", self.recompute_ratio)
        require(
            isinstance(self.check_layer, int) and self.check_layer >= 0,
            f"check_layer must be a non-negative integer, got {self.check_layer!r}",
        )
        require(isinstance(self.filter_layers, int) and self.filter_layers >= 0,
                f"filter_layers must be a non-negative integer, got {self.filter_layers!r}")
        if self.first_ratio is not None:
            check_ratio("first_ratio", self.first_ratio)
            require(self.first_ratio >= self.recompute_ratio,
                    f"first_ratio must be at least recompute_ratio, got {self.first_ratio!r}")

    def schedule(self, context_len: int, num_layers: int) -> list[tuple[int, int]]:
        """(layer, tokens that go on recomputing after it), from the check layer on."""
        require(
            self.check_layer < num_layers,
            f"check_layer must be below the model's {num_layers} layers, got {self.check_layer}",
        )
        first = min(1.0, 2 * self.recompute_ratio) if self.first_ratio is None else self.first_ratio
        steps = min(self.filter_layers, num_layers - 1 - self.check_layer)
        if steps == 0:
            return [(self.check_layer, budget_of(self.recompute_ratio, context_len))]
        return [
            (self.check_layer + j, budget_of(first + (self.recompute_ratio - first) * j / steps, context_len))
            for j in range(steps + 1)
        ]

    def plan(self, context: PlanContext) -> Plan:
        every = context.layout.all_tokens()
        narrowings = tuple(
            Narrowing(layer, _most_deviated(count))
            for layer, count in self.schedule(context.layout.context_len, context.num_layers)
        )
        return Plan(keep=every, recompute=every, narrowings=narrowings)


def _most_deviated(count: int) -> NarrowFn:
    """Keeps the `count` recomputed tokens whose fresh KV is farthest (L2) from their stored KV."""

    def choose(fresh_k, fresh_v, stored_k, stored_v) -> torch.Tensor:
        deviation = (fresh_k - stored_k).float().pow(2).sum((0, 2))
        deviation += (fresh_v - stored_v).float().pow(2).sum((0, 2))  # [R]
        return torch.topk(deviation, min(count, deviation.numel())).indices

    return choose
