"""`samkv`: complementary sparse selection over all contexts, then local recomputation (docs/METHOD.md)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from samkv.assembly import Plan
from samkv.layout import Layout
from samkv.methods.base import Method, PlanContext, check_layer_band, check_ratio, nothing, require
from samkv.methods.samkv.evidence import Evidence, StoredEvidence
from samkv.methods.samkv.packet import (
    anchor_shares,
    packet_keep,
    reserved_tokens,
    select_per_document,
    split_budget,
)
from samkv.selection import (
    block_index,
    block_max,
    budget_of,
    max_pool_within_documents,
    select_blocks,
    zscore,
)

COMPLEMENT_MODES = ("summary", "reprobe", "entity", "packet")
# "packet" mode's own defaults where the shared fields are left at None.
PACKET_FUSE = 0.9
PACKET_STABLE_LAYERS = 4
DEBIAS_MODES = ("ratio", "difference", "none")


@dataclass(frozen=True)
class SamKV(Method):
    """Keeps ρ of the context tokens, scored against the question and the other contexts.

    s = z(a): `a` is the question probe's attention q against the neutral probe's n, per `debias`:
    "ratio" log(q + ε/N) − log(n + ε/N) (ε = `debias_smoothing`), "difference" q − n, "none" q.
    The complementary term (when `complement` and λ = `complement_weight` > 0) has three forms:
    - "entity" (the default): two stages sharing the budget B. The first keeps (1 − λ)·B tokens
      by s; the names in its `bridge_blocks` best blocks that the question does not name and that
      occur in at most `bridge_contexts` other contexts are the bridges; the second stage fills B
      with the blocks scoring highest on max z(match to a bridge) + max s within the block;
    - "reprobe": the same two stages, the second scored by the question re-probed over the
      first stage's cache (samkv.methods.samkv.reprobe);
    - "summary": s + λ·z(c), `c` the attention of the other contexts' summary queries;
    - "packet" (samkv.methods.samkv.packet; λ unused): no probe; every context's `sink_tokens`
      first and `local_tokens` last tokens are kept, and its other tokens, in blocks, are scored
      by their keys against the question query plus the other contexts' document queries, over
      the `stable_layers`.
    `adaptive_share` (default: on in "packet" only) splits B across contexts by the anchor rule
    of samkv.methods.samkv.packet instead of taking the best blocks over all contexts. `fuse`
    (default: 0.9 in "packet", else 1) writes recomputed KV as fuse·fresh + (1 − fuse)·stored.
    """

    name = "samkv"
    sparse = True
    recomputes = True
    keep_ratio: float = 0.15
    complement: bool = True
    complement_weight: float = 0.3
    complement_mode: str = "entity"
    summary_window: int = 8
    recompute: bool = True
    debias: str = "ratio"
    debias_smoothing: float = 0.1
    block_size: int = 16
    sentence_blocks: bool = False  # blocks start at sentence starts (at most block_size tokens)
    see_dropped: bool = False  # the recompute attends to dropped tokens' stored KV too
    name_prior: float = 0.0  # first stage: z units off the contexts that lack a name the question gives
    pool_width: int = 1
    min_blocks_per_context: int = 0
    min_budget_blocks_per_context: int = 1
    global_budget: bool = True
    layers: tuple[int, int] | None = None  # the probe's layer band; default: the first `probe_depth` of them
    probe_depth: float = 0.8
    match_layers: tuple[int, int] | None = None  # entity matching; default: the first two layers
    match_threshold: float = 0.9
    bridge_blocks: int = 4
    bridge_contexts: int = 2
    adaptive_share: bool | None = None  # None: the mode's own (True in "packet", else False)
    fuse: float | None = None  # None: the mode's own (PACKET_FUSE in "packet", else 1)
    sink_tokens: int = 4  # "packet" and adaptive_share: each context's first tokens
    local_tokens: int = 8  # ... and its last ones (as many as the stored summary queries)
    stable_layers: tuple[int, int] | None = None  # "packet"'s layers; default: the last PACKET_STABLE_LAYERS

    def __post_init__(self) -> None:
        check_ratio("keep_ratio", self.keep_ratio)
        require(self.complement_mode in COMPLEMENT_MODES,
                f"complement_mode must be one of {', '.join(COMPLEMENT_MODES)}, got {self.complement_mode!r}")
        require(self.complement_weight >= 0, f"complement_weight must be >= 0, got {self.complement_weight!r}")
        require(self.complement_mode in ("summary", "packet") or self.complement_weight < 1,
                f"complement_weight is the second stage's share of the budget in mode "
                f"{self.complement_mode!r}; it must be below 1, got {self.complement_weight!r}")
        require(isinstance(self.name_prior, (int, float)) and self.name_prior >= 0,
                f"name_prior must be a number >= 0, got {self.name_prior!r}")
        require(self.debias in DEBIAS_MODES,
                f"debias must be one of {', '.join(DEBIAS_MODES)}, got {self.debias!r}")
        require(isinstance(self.debias_smoothing, (int, float)) and self.debias_smoothing > 0,
                f"debias_smoothing must be > 0, got {self.debias_smoothing!r}")
        require(isinstance(self.summary_window, int) and 1 <= self.summary_window <= 64,
                f"summary_window must be an integer in [1, 64], got {self.summary_window!r}")
        check_ratio("probe_depth", self.probe_depth)
        require(0 < self.match_threshold < 1, f"match_threshold must be in (0, 1), got {self.match_threshold!r}")
        require(isinstance(self.bridge_blocks, int) and self.bridge_blocks >= 1,
                "bridge_blocks must be a positive integer")
        require(isinstance(self.bridge_contexts, int) and self.bridge_contexts >= 1,
                "bridge_contexts must be a positive integer")
        require(isinstance(self.block_size, int) and self.block_size >= 1, "block_size must be a positive integer")
        require(isinstance(self.pool_width, int) and self.pool_width >= 1, "pool_width must be a positive integer")
        require(isinstance(self.min_budget_blocks_per_context, int) and self.min_budget_blocks_per_context >= 0,
                "min_budget_blocks_per_context must be a non-negative integer")
        require(isinstance(self.min_blocks_per_context, int) and self.min_blocks_per_context >= 0,
                "min_blocks_per_context must be a non-negative integer")
        require(self.adaptive_share is None or isinstance(self.adaptive_share, bool),
                f"adaptive_share must be True, False or None, got {self.adaptive_share!r}")
        require(self.fuse is None or (isinstance(self.fuse, (int, float)) and 0 <= self.fuse <= 1),
                f"fuse must be in [0, 1] (or None for the mode's own), got {self.fuse!r}")
        require(isinstance(self.sink_tokens, int) and isinstance(self.local_tokens, int)
                and min(self.sink_tokens, self.local_tokens) >= 0 and self.sink_tokens + self.local_tokens >= 1,
                "sink_tokens and local_tokens must be non-negative integers, at least one of them positive")
        require(not (self.sentence_blocks and (self.uses_packet or self.shares_adaptively)),
                "sentence_blocks applies to the probe modes' block selection; adaptive_share and the "
                "packet mode cut their own blocks")
        require(self.global_budget or not (self.uses_packet or self.shares_adaptively),
                "global_budget=False gives each context its own ⌈ρL_i⌉, while adaptive_share and the packet "
                "mode split B across contexts themselves; choose one")

    @property
    def uses_complement(self) -> bool:
        return self.complement and self.complement_weight > 0

    @property
    def uses_packet(self) -> bool:
        return self.uses_complement and self.complement_mode == "packet"

    @property
    def shares_adaptively(self) -> bool:
        """Whether B is split across contexts by the anchor rule."""
        return self.uses_packet if self.adaptive_share is None else self.adaptive_share

    @property
    def fuse_weight(self) -> float:
        """The weight of freshly recomputed KV against the stored KV of the same tokens."""
        if self.fuse is None:
            return PACKET_FUSE if self.uses_packet else 1.0
        return float(self.fuse)

    def plan(self, context: PlanContext) -> Plan:
        return self.plan_over(StoredEvidence(context), context.layout, context.num_layers)

    def plan_over(self, evidence: Evidence, layout: Layout, num_layers: int) -> Plan:
        """The plan, given what the probes see: the selection alone, without the model."""
        if self.uses_packet:
            keep = self._packet_select(evidence, layout, num_layers)
        else:
            keep = self._probe_select(evidence, layout, num_layers)
        return Plan(keep=keep, recompute=keep if self.recompute else nothing(), fuse=self.fuse_weight,
                    sees_dropped=self.see_dropped)

    def _packet_select(self, evidence: Evidence, layout: Layout, num_layers: int) -> torch.Tensor:
        if layout.context_len == 0:
            return nothing()
        default_band = (max(0, num_layers - PACKET_STABLE_LAYERS), num_layers)
        stable = check_layer_band(self.stable_layers or default_band, num_layers)
        scores = evidence.packet(self.sink_tokens, self.local_tokens, stable, self.summary_window)
        budget = budget_of(self._ratio(layout), layout.context_len)
        return packet_keep(scores, layout, budget, self.sink_tokens, self.local_tokens, self.block_size,
                           self.shares_adaptively)

    def _probe_select(self, evidence: Evidence, layout: Layout, num_layers: int) -> torch.Tensor:
        """The kept tokens of every mode but "packet": the question probe, then the complement."""
        # The last layers add little to where the question looks and cost a fifth of the probe
        # (measured: answer recall equal or better without them).
        default_band = (0, max(1, math.ceil(self.probe_depth * num_layers)))
        band = check_layer_band(self.layers or default_band, num_layers)
        summary = self.uses_complement and self.complement_mode == "summary"
        probe = evidence.probe(band, summary, self.summary_window)
        scores = zscore(self._question_term(probe.question, probe.neutral))
        if summary:
            scores = scores + self.complement_weight * zscore(probe.complement)
        two_stage = self.uses_complement and not summary and layout.context_len > 0
        ratio = self._ratio(layout)
        first_ratio = ratio * (1 - self.complement_weight) if two_stage else ratio
        starts = evidence.sentence_starts() if self.sentence_blocks and layout.context_len else None
        keep = self._select(self._name_prior(scores, evidence, layout), layout, first_ratio, starts=starts)
        if two_stage:
            if self.complement_mode == "reprobe":
                second = zscore(evidence.reprobe(keep, band))
            else:
                second = self._bridge_scores(scores, keep, evidence, layout, num_layers, starts)
            keep = self._select(second, layout, ratio, around=keep, starts=starts)
        return keep

    def _name_prior(self, scores: torch.Tensor, evidence: Evidence, layout: Layout) -> torch.Tensor:
        """`scores` lowered by `name_prior` in the contexts that lack a name the question gives,
        where some context holds them all. Only the first stage sees it: the second stage looks
        for what the question does not name (a bridge's document)."""
        if self.name_prior <= 0 or layout.context_len == 0:
            return scores
        named = evidence.named_contexts()
        if bool(named.all()) or not bool(named.any()):
            return scores
        return scores - self.name_prior * (~named)[layout.doc_of].to(scores.dtype)

    def _ratio(self, layout: Layout) -> float:
        """ρ, raised so that B holds `min_budget_blocks_per_context` blocks per context: on a few
        short contexts ρN is less than one sentence, too little to hold an answer. The blocks may
        go to any context; nothing forces one into each."""
        if layout.context_len == 0:
            return self.keep_ratio
        floor = self.min_budget_blocks_per_context * self.block_size * layout.num_docs / layout.context_len
        return max(self.keep_ratio, min(1.0, floor))

    def _bridge_scores(
        self, scores: torch.Tensor, first: torch.Tensor, evidence: Evidence, layout: Layout, num_layers: int,
        starts: torch.Tensor | None,
    ) -> torch.Tensor:
        """Second-stage scores of "entity" mode, given the first stage's kept tokens."""
        block_of = block_index(layout, self.block_size, starts)
        strength = block_max(scores, block_of)
        # Bridges come from where the question looks hardest: the names in the weaker kept blocks
        # are mostly other people's, and following them spends the budget on distractors.
        kept_blocks = torch.unique(block_of[first])
        block_strength = torch.zeros(int(block_of.max()) + 1).index_copy_(0, block_of, strength)
        best = kept_blocks[torch.argsort(block_strength[kept_blocks], descending=True)][: self.bridge_blocks]
        anchors = first[torch.isin(block_of[first], best)]
        match_band = (0, min(2, num_layers)) if self.match_layers is None else self.match_layers
        match = evidence.entity_match(
            anchors, check_layer_band(match_band, num_layers), self.match_threshold, self.bridge_contexts,
        )
        # Summed per block, not per token: the bridge's name and what the question asks about it
        # are different tokens of the same sentence. s breaks ties inside the block that overflows B.
        return block_max(zscore(match), block_of) + strength + 1e-3 * scores

    def _question_term(self, question: torch.Tensor, neutral: torch.Tensor) -> torch.Tensor:
        if self.debias == "none":
            return question
        if self.debias == "difference":
            return question - neutral
        # A ratio, not a difference: recency and sinks scale what every query reads, so a
        # difference still hands the document nearest the question most of the budget.
        floor = self.debias_smoothing / max(1, question.numel())
        return torch.log(question + floor) - torch.log(neutral + floor)

    def _select(
        self, scores: torch.Tensor, layout: Layout, ratio: float, around: torch.Tensor | None = None,
        starts: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """ρN tokens by `scores`, `around`'s tokens (an earlier stage's) kept first; blocks start
        at `starts` (sentence starts) where given."""
        ranked = scores.clone()
        if around is not None:
            ranked[around] = float("inf")  # the earlier stage's tokens stay; B is filled around them
        ranked = max_pool_within_documents(ranked, layout, self.pool_width)
        if not self.shares_adaptively:
            return select_blocks(
                ranked, layout, ratio, self.block_size, self.min_blocks_per_context, self.global_budget, starts,
            )
        # Each context gets what it already holds plus its share of the rest of B, by the anchor
        # rule on this stage's own scores (an earlier stage's +inf would say nothing).
        lengths = torch.tensor(layout.lengths, dtype=torch.long)
        held = torch.zeros_like(lengths)
        if around is not None:
            held = torch.bincount(layout.doc_of[around], minlength=layout.num_docs)
        anchors = reserved_tokens(layout, self.sink_tokens, self.local_tokens)
        shares = anchor_shares(scores, layout, anchors, self.block_size)
        room = lengths - held
        left = budget_of(ratio, layout.context_len) - int(held.sum())
        budgets = held + split_budget(left, shares * room, room)
        return select_per_document(ranked, layout, budgets, self.block_size, self.min_blocks_per_context)



@dataclass(frozen=True)
class SamKVQuestion(SamKV):
    """`samkv-question`: the question term alone, the complementary term off (`samkv` with complement=False)."""

    name = "samkv-question"
    complement: bool = False
