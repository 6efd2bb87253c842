"""The shape every method has: a small validated dataclass whose `plan` decides, the engine executes."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch

from samkv.assembly import Plan
from samkv.cache import KVCache, KVMeter
from samkv.document import DocumentSource
from samkv.errors import InvalidRequest
from samkv.layers import ModelOps
from samkv.layout import Layout
from samkv.prompt import PromptTokenizer
from samkv.stages import StageClock


@dataclass(frozen=True)
class PlanContext:
    """The request as a method may read it to decide; a method builds its own evidence from it.

    `source` reads the stored KV one layer at a time (reads are timed as "load"); `meter`
    counts the KV bytes a method holds while it looks; `clock.stage("probe")` times the looking.
    """

    ops: ModelOps
    prefix: KVCache  # the shared prefix P, computed once by the engine
    source: DocumentSource
    layout: Layout
    context_ids: torch.Tensor  # [N] the documents' token ids, in prompt order
    question_ids: torch.Tensor  # [|Q|] the question turn, the answer prefix included
    prompt: PromptTokenizer  # to tokenize other questions the way Q is tokenized
    answer_prefix: str
    meter: KVMeter
    clock: StageClock
    # What a method's probe runs on: `ops` itself, or the same model with int8 copies of its
    # decoder blocks (the engine's `probe_weights`), whose outputs only decide a plan.
    probe_ops: ModelOps

    @property
    def num_layers(self) -> int:
        return self.ops.shape.num_layers


class Method(ABC):
    """A way of turning stored document caches into a decoding cache."""

    name: ClassVar[str]
    sparse: ClassVar[bool] = False  # decodes from a cache smaller than the context
    recomputes: ClassVar[bool] = False  # recomputes some context tokens' KV over the other documents

    @abstractmethod
    def plan(self, context: PlanContext) -> Plan:
        """Which context tokens to recompute and which to keep."""


def require(condition: bool, message: str) -> None:
    """Raises InvalidRequest(message) unless `condition` holds."""
    if not condition:
        raise InvalidRequest(message)


def check_ratio(name: str, value: float) -> None:
    """Raises InvalidRequest unless `value` is in (0, 1]."""
    require(isinstance(value, (int, float)) and 0.0 < value <= 1.0, f"{name} must be in (0, 1], got {value!r}")


def check_layer_band(layers: tuple[int, int] | None, num_layers: int) -> range:
    """The layers [start, stop) to average probe scores over; all layers when None."""
    if layers is None:
        return range(num_layers)
    start, stop = layers
    require(0 <= start < stop <= num_layers, f"layers must satisfy 0 <= start < stop <= {num_layers}, got {layers}")
    return range(start, stop)


def nothing() -> torch.Tensor:
    """No context index: the plan of a method that recomputes nothing."""
    return torch.empty(0, dtype=torch.long)
