"""`samkv`: complementary sparse selection over all contexts, then local recomputation (SAMKV.md)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from samkv.assembly import Plan
from samkv.methods.base import Method, PlanContext, check_layer_band, check_ratio, nothing, require
from samkv.selection import max_pool_within_documents, select_blocks, zscore

COMPLEMENT_MODES = ("summary", "reprobe", "entity")


@dataclass(frozen=True)
class SamKV(Method):
    """Keeps ρ of the context tokens, scored against the question and the other contexts.

    s = z(a): `a` is the question probe's attention (minus the neutral probe's when `debias`).
    The complementary term (when `complement` and λ = `complement_weight` > 0) has three forms:
    - "summary": s + λ·z(c), `c` the attention of the other contexts' summary queries;
    - "reprobe" and "entity": two stages sharing the budget B: the first keeps (1 − λ)·B tokens
      by s, the second fills B with the blocks that samkv.complement scores highest given them
      (for "entity", z(match) + s: the entity match alone cannot tell which mention matters).
    """

    name = "samkv"
    sparse = True
    keep_ratio: float = 0.15
    complement: bool = True
    complement_weight: float = 0.0
    complement_mode: str = "summary"
    summary_window: int = 8
    recompute: bool = True
    debias: bool = True
    block_size: int = 16
    pool_width: int = 1
    min_blocks_per_context: int = 1
    global_budget: bool = True
    layers: tuple[int, int] | None = None
    match_layers: tuple[int, int] | None = None  # entity matching; default: the first two layers

    def __post_init__(self) -> None:
        check_ratio("keep_ratio", self.keep_ratio)
        require(self.complement_mode in COMPLEMENT_MODES,
                f"complement_mode must be one of {', '.join(COMPLEMENT_MODES)}, got {self.complement_mode!r}")
        require(self.complement_weight >= 0, f"complement_weight must be >= 0, got {self.complement_weight!r}")
        require(self.complement_mode == "summary" or self.complement_weight < 1,
                f"complement_weight is the second stage's share of the budget in mode "
                f"{self.complement_mode!r}; it must be below 1, got {self.complement_weight!r}")
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
        summary = self.uses_complement and self.complement_mode == "summary"
        probe = context.probe(band, summary, self.summary_window)
        question = probe.question - probe.neutral if self.debias else probe.question
        scores = zscore(question)
        if summary:
            scores = scores + self.complement_weight * zscore(probe.complement)
        two_stage = self.uses_complement and not summary
        first_ratio = self.keep_ratio * (1 - self.complement_weight) if two_stage else self.keep_ratio
        keep = self._select(scores, context, first_ratio)
        if two_stage:
            if self.complement_mode == "reprobe":
                second = zscore(context.reprobe(keep, band))
            else:
                match_band = (0, min(2, context.num_layers)) if self.match_layers is None else self.match_layers
                match = context.entity_match(keep, check_layer_band(match_band, context.num_layers))
                # A bridge entity recurs throughout its document; the question's own score picks,
                # among the sentences naming it, the one that states what the question asks.
                second = zscore(match) + scores
            second[keep] = float("inf")  # the first stage's tokens stay; B is filled around them
            keep = self._select(second, context, self.keep_ratio)
        return Plan(keep=keep, recompute=keep if self.recompute else nothing())

    def _select(self, scores: torch.Tensor, context: PlanContext, ratio: float) -> torch.Tensor:
        scores = max_pool_within_documents(scores, context.layout, self.pool_width)
        return select_blocks(
            scores, context.layout, ratio, self.block_size, self.min_blocks_per_context, self.global_budget,
        )
