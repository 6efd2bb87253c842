"""`snapkv`: single-context sparsity applied to each document; nothing recomputed.

Each context is scored by the question probe alone, softmax normalised within the context, max
pooled, and keeps its own ceil(ρ L_i) best tokens; the stored KV of those tokens is decoded from.
"""

from __future__ import annotations

from dataclasses import dataclass

from samkv.assembly import Plan
from samkv.methods.base import Method, PlanContext, check_layer_band, check_ratio, nothing, require
from samkv.methods.samkv.probe import run_probe
from samkv.selection import max_pool_within_documents, select_blocks


@dataclass(frozen=True)
class SnapKV(Method):
    name = "snapkv"
    sparse = True
    keep_ratio: float = 0.15
    pool_width: int = 7
    layers: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        check_ratio("keep_ratio", self.keep_ratio)
        require(isinstance(self.pool_width, int) and self.pool_width >= 1, "pool_width must be a positive integer")

    def plan(self, context: PlanContext) -> Plan:
        band = check_layer_band(self.layers, context.num_layers)
        with context.clock.stage("probe"):
            scores = run_probe(context, band, False, 1).question_local
        scores = max_pool_within_documents(scores, context.layout, self.pool_width)
        keep = select_blocks(scores, context.layout, self.keep_ratio, 1, 1, global_budget=False)
        return Plan(keep=keep, recompute=nothing())
