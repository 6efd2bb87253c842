"""Where a request's time goes: a clock of exclusive stages, and a source that charges its reads to "load"."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from samkv.document import DocumentMeta, DocumentSource, LayerKV

# Every generation's stats carry each of these, in milliseconds (0 for a stage that did not run).
# The question runs inside "assemble" (samkv.assembly), so it has no stage of its own.
STAGES = ("load", "probe", "select", "assemble")


class StageClock:
    """Milliseconds per stage, each counted once: time inside a nested stage is not charged to the
    stage around it, so reading stored KV during the probe counts as "load", not as "probe"."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = dict.fromkeys(STAGES, 0.0)
        self._open: list[str] = []
        self._since = 0.0

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Charges the time spent inside the block to `name`."""
        self._switch()
        self._open.append(name)
        try:
            yield
        finally:
            self._switch()
            self._open.pop()

    def _switch(self) -> None:
        now = time.perf_counter()
        if self._open:
            self.ms[self._open[-1]] = self.ms.get(self._open[-1], 0.0) + (now - self._since) * 1000
        self._since = now

    def stats(self) -> dict[str, float]:
        """`<stage>_ms` for every stage."""
        return {f"{name}_ms": self.ms.get(name, 0.0) for name in STAGES}


class TimedSource:
    """A `DocumentSource` whose layer reads are charged to the clock's "load" stage."""

    def __init__(self, source: DocumentSource, clock: StageClock) -> None:
        self.source = source
        self.clock = clock

    @property
    def documents(self) -> Sequence[DocumentMeta]:
        return self.source.documents

    def read_layer(self, layer: int, documents: Sequence[int] | None = None) -> list[LayerKV]:
        with self.clock.stage("load"):
            return self.source.read_layer(layer, documents)
