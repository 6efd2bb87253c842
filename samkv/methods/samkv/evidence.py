"""What SamKV looks at to decide, read from the stored KV of one request.

The selection (samkv.methods.samkv.method) sees only this interface, so it can be driven by
constructed scores in tests and by the stored caches in the engine.
"""

from __future__ import annotations

from typing import Protocol

import torch

from samkv.methods.base import PlanContext
from samkv.methods.samkv.entity import (
    bridge_entities,
    entity_match_scores,
    named_contexts,
    sentence_starts,
)
from samkv.methods.samkv.packet import packet_scores
from samkv.methods.samkv.probe import ProbeScores, run_probe
from samkv.methods.samkv.reprobe import reprobe_scores


class Evidence(Protocol):
    """The looks SamKV may take at the contexts."""

    def probe(self, layers: range, with_complement: bool, summary_window: int) -> ProbeScores:
        """The question and neutral probes (and the summary term) averaged over `layers`."""
        ...

    def reprobe(self, kept: torch.Tensor, layers: range) -> torch.Tensor:
        """[N] second-stage scores: the question over the first stage's compact cache."""
        ...

    def entity_match(self, anchors: torch.Tensor, layers: range, threshold: float, max_contexts: int) -> torch.Tensor:
        """[N] second-stage scores: key similarity to the bridge entities among `anchors`."""
        ...

    def packet(self, sink: int, local: int, layers: range, window: int) -> torch.Tensor:
        """[N] "packet" scores: each token's key against its document's complementary query."""
        ...

    def sentence_starts(self) -> torch.Tensor:
        """Bool [N]: the context tokens that open a sentence."""
        ...

    def named_contexts(self) -> torch.Tensor:
        """Bool [n]: the contexts holding every name the question gives."""
        ...


class StoredEvidence:
    """`Evidence` from a request's stored KV; every look is timed as the "probe" stage."""

    def __init__(self, context: PlanContext) -> None:
        self.context = context

    def probe(self, layers: range, with_complement: bool, summary_window: int) -> ProbeScores:
        with self.context.clock.stage("probe"):
            return run_probe(self.context, layers, with_complement, summary_window)

    def reprobe(self, kept: torch.Tensor, layers: range) -> torch.Tensor:
        with self.context.clock.stage("probe"):
            return reprobe_scores(self.context, kept, layers)

    def entity_match(self, anchors: torch.Tensor, layers: range, threshold: float, max_contexts: int) -> torch.Tensor:
        context = self.context
        with context.clock.stage("probe"):
            entities = bridge_entities(context.prompt.tokenizer, context.context_ids, context.question_ids)
            return entity_match_scores(
                context.source, context.layout, anchors, entities, layers, threshold, max_contexts
            )

    def packet(self, sink: int, local: int, layers: range, window: int) -> torch.Tensor:
        with self.context.clock.stage("probe"):
            return packet_scores(self.context, sink, local, layers, window)

    def sentence_starts(self) -> torch.Tensor:
        context = self.context
        with context.clock.stage("select"):
            return sentence_starts(context.prompt.tokenizer.convert_ids_to_tokens(context.context_ids.tolist()))

    def named_contexts(self) -> torch.Tensor:
        context = self.context
        with context.clock.stage("select"):
            return named_contexts(context.prompt.tokenizer, context.context_ids, context.question_ids, context.layout)
