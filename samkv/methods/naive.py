"""`naive`: the aligned stored caches concatenated, nothing recomputed (PromptCache / TurboRAG style)."""

from __future__ import annotations

from dataclasses import dataclass

from samkv.assembly import Plan
from samkv.methods.base import Method, PlanContext, nothing


@dataclass(frozen=True)
class Naive(Method):
    name = "naive"

    def plan(self, context: PlanContext) -> Plan:
        return Plan(keep=context.layout.all_tokens(), recompute=nothing())
