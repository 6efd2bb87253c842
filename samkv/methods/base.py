"""The shape every method has: a small validated dataclass whose `plan` decides, the engine executes."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch

from samkv.assembly import Plan
from samkv.errors import InvalidRequest
from samkv.layout import Layout
from samkv.probe import ProbeScores

# (layers to average over, with the complement term, summary window w) -> scores
ProbeFn = Callable[[range, bool, int], ProbeScores]
# (first-stage kept context indices, layers to average over) -> second-stage scores [N]
StageFn = Callable[[torch.Tensor, range], torch.Tensor]
# (anchor context indices, layers, similarity threshold, most contexts a bridge occurs in) -> [N]
MatchFn = Callable[[torch.Tensor, range, float, int], torch.Tensor]


@dataclass(frozen=True)
class PlanContext:
    """What a method may look at to decide: the layout, the model's depth, and the probes it may run."""

    layout: Layout
    num_layers: int
    probe: ProbeFn
    reprobe: StageFn  # the question over the first stage's compact cache
    entity_match: MatchFn  # key similarity to the bridge entities among the anchors


class Method(ABC):
    """A way of turning stored document caches into a decoding cache."""

    name: ClassVar[str]
    sparse: ClassVar[bool] = False  # keeps fewer tokens than the context has

    @abstractmethod
    def plan(self, context: PlanContext) -> Plan:
        """Which context tokens to recompute and which to keep."""


def require(condition: bool, message: str) -> None:
    """Raises InvalidRequest(message) unless `condition` holds."""
    if not condition:
        raise InvalidRequest(message)


def check_ratio(name: str, value: float) -> None:
    require(isinstance(value, (int, float)) and 0.0 < value <= 1.0, f"{name} must be in (0, 1], got {value!r}")


def check_layer_band(layers: tuple[int, int] | None, num_layers: int) -> range:
    """The layers [start, stop) to average probe scores over; all layers when None."""
    if layers is None:
        return range(num_layers)
    start, stop = layers
    require(0 <= start < stop <= num_layers, f"layers must satisfy 0 <= start < stop <= {num_layers}, got {layers}")
    return range(start, stop)


def nothing() -> torch.Tensor:
    return torch.empty(0, dtype=torch.long)
