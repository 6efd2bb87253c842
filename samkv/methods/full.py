"""`full`: prefill the whole prompt from token ids; no stored cache is used. The quality reference."""

from __future__ import annotations

from dataclasses import dataclass

from samkv.assembly import Plan
from samkv.methods.base import Method, PlanContext


@dataclass(frozen=True)
class Full(Method):
    name = "full"
    recomputes = True

    def plan(self, context: PlanContext) -> Plan:
        every = context.layout.all_tokens()
        return Plan(keep=every, recompute=every, reads_stored=False)
