"""`epic`: recompute the first k tokens of every context but the first (EPIC's LegoLink).

EPIC (Hu et al., 2024) recomputes a few initial tokens of each chunk, where a chunk encoded on
its own puts an attention sink; its LegoLink-16 recomputes k = 16. The first context was encoded
right after the same prefix P it follows here, so its stored KV is already exact. With
`recompute_ratio` ρ, k is set so that the recomputed tokens total about B = ceil(ρN), as a method
recomputing ρ of the context does: k = ceil(B / (n − 1)) over the n − 1 recomputed contexts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from samkv.assembly import Plan
from samkv.layout import Layout
from samkv.methods.base import Method, PlanContext, check_ratio, require
from samkv.selection import budget_of


@dataclass(frozen=True)
class Epic(Method):
    name = "epic"
    recomputes = True
    k: int = 16
    recompute_ratio: float | None = None  # when set, k follows from it (equal recompute)

    def __post_init__(self) -> None:
        require(isinstance(self.k, int) and self.k >= 0, f"k must be a non-negative integer, got {self.k!r}")
        if self.recompute_ratio is not None:
            check_ratio("recompute_ratio", self.recompute_ratio)

    def initial_tokens(self, layout: Layout) -> int:
        """k, the tokens recomputed at the start of each context but the first."""
        if self.recompute_ratio is None:
            return self.k
        recomputed_contexts = max(1, layout.num_docs - 1)
        return math.ceil(budget_of(self.recompute_ratio, layout.context_len) / recomputed_contexts)

    def plan(self, context: PlanContext) -> Plan:
        layout = context.layout
        within = torch.arange(layout.context_len) - layout.offsets[layout.doc_of]
        recompute = ((within < self.initial_tokens(layout)) & (layout.doc_of > 0)).nonzero().squeeze(1)
        return Plan(keep=layout.all_tokens(), recompute=recompute)
