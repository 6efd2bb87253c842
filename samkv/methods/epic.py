"""`epic`: recompute the first k tokens of every context but the first (EPIC's LegoLink)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from samkv.assembly import Plan
from samkv.methods.base import Method, PlanContext, require


@dataclass(frozen=True)
class Epic(Method):
    name = "epic"
    recomputes = True
    k: int = 16

    def __post_init__(self) -> None:
        require(isinstance(self.k, int) and self.k >= 0, f"k must be a non-negative integer, got {self.k!r}")

    def plan(self, context: PlanContext) -> Plan:
        layout = context.layout
        within = torch.arange(layout.context_len) - layout.offsets[layout.doc_of]
        recompute = ((within < self.k) & (layout.doc_of > 0)).nonzero().squeeze(1)
        return Plan(keep=layout.all_tokens(), recompute=recompute)
