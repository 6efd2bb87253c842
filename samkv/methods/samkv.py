"""`samkv`: complementary sparse selection over all contexts, then local recomputation (SAMKV.md)."""

from __future__ import annotations

from dataclasses import dataclass

from samkv.assembly import Plan
from samkv.methods.base import Method, PlanContext, check_layer_band, check_ratio, nothing, require
from samkv.selection import max_pool_within_documents, select_blocks, zscore


@dataclass(frozen=True)
class SamKV(Method):
    """Keeps ρ of the context tokens, scored against the question and the other contexts.

    s = z(a) + λ·z(c): `a` is the question probe's attention (minus the neutral probe's when
    `debias`), `c` the attention of the other contexts' summary queries (when `complement`).
    """

    name = "samkv"
    sparse = True
    keep_ratio: float = 0.15
    complement: bool = True
    complement_weight: float = 0.0
    summary_window: int = 8
    recompute: bool = True
    debias: bool = True
    block_size: int = 16
    pool_width: int = 1
    min_blocks_per_context: int = 1
    global_budget: bool = True
    layers: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        check_ratio("keep_ratio", self.keep_ratio)
        require(self.complement_weight >= 0, f"complement_weight must be >= 0, got {self.complement_weight!r}")
        require(isinstance(self.summary_window, int) and 1 <= self.summary_window <= 64,
                f"summary_window must be an integer in [1, 64], got {self.summary_window!r}")
        require(isinstance(self.block_size, int) and self.block_size >= 1, "block_size must be a positive integer")
        require(isinstance(self.pool_width, int) and self.pool_width >= 1, "pool_width must be a positive integer")
        require(isinstance(self.min_blocks_per_context, int) and self.min_blocks_per_context >= 0,
                "min_blocks_per_context must be a non-negative integer")

    @property
    def uses_complement(self) -> bool:
        return self.complement and self.complement_weight > 0

    def plan(self, context: PlanContext) -> Plan:
        band = check_layer_band(self.layers, context.num_layers)
        probe = context.probe(band, self.uses_complement, self.summary_window)
        question = probe.question - probe.neutral if self.debias else probe.question
        scores = zscore(question)
        if self.uses_complement:
            scores = scores + self.complement_weight * zscore(probe.complement)
        scores = max_pool_within_documents(scores, context.layout, self.pool_width)
        keep = select_blocks(
            scores, context.layout, self.keep_ratio, self.block_size,
            self.min_blocks_per_context, self.global_budget,
        )
        return Plan(keep=keep, recompute=keep if self.recompute else nothing())
