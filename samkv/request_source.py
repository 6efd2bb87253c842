"""One request's reads of its stored documents: the next layer read ahead, read layers kept up to a bound."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager

import torch

from samkv.cache import KVMeter, tensor_bytes
from samkv.document import DocumentMeta, DocumentSource, LayerKV, select

Documents = tuple[int, ...] | None  # indices of documents in prompt order; None: all of them


class RequestSource:
    """A `DocumentSource` over the request's `source` that can read each layer once.

    A method looks at some layers (its probe) before the assembly reads them all; the layers
    read are kept for the rest of the request, up to `hold_bytes`, so the store serves each kept
    one once. Inside
    `final_pass` (the assembly, the last reader) a layer is handed over and forgotten, so no
    more than the looked-at layers are ever held.

    While the caller works on layer l, layer l + 1 is read on a worker thread: reads are file or
    network I/O, which release the GIL. Every read of `source` runs on that one thread, one at a
    time, so a source meant for one thread (kvstore's `StoreSource`) is used as one. `close`
    waits for a read in flight and ends the worker.

    Holding trades memory for reads: `hold_bytes` bounds the stored bytes kept between passes
    (None: no bound; 0: nothing is kept, and the assembly reads every layer again). `meter`
    counts the stored keys and values from the moment a layer is handed out until it is
    forgotten, so a request's peak includes what its probe keeps for the assembly.
    """

    def __init__(
        self, source: DocumentSource, num_layers: int, meter: KVMeter, hold_bytes: int | None = None
    ) -> None:
        if hold_bytes is not None and hold_bytes < 0:
            raise ValueError(f"hold_bytes must be None or at least 0, got {hold_bytes}")
        self.source = source
        self.num_layers = num_layers
        self.meter = meter
        self.hold_bytes = hold_bytes
        self._held_bytes = 0
        self._held: dict[int, list[LayerKV]] = {}  # every document's parts of a layer
        # layer -> (the documents asked for, None for all; the read in flight)
        self._pending: dict[int, tuple[Documents, Future[list[LayerKV]]]] = {}
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="samkv-read")
        self._final = False

    @property
    def documents(self) -> Sequence[DocumentMeta]:
        return self.source.documents

    def read_layer(self, layer: int, documents: Sequence[int] | None = None) -> list[LayerKV]:
        """Layer `layer` of the documents at `documents` (every one for None), in that order;
        read from `source` again only if not kept. Only layers read for every document are
        kept for a later pass; the next layer is read ahead for the same documents."""
        wanted: Documents = None if documents is None else tuple(documents)
        held = self._held.get(layer)
        if held is None:
            held = self._take(layer, wanted)
            self._held[layer] = held
            self._held_bytes += tensor_bytes(*_tensors(held))
            self.meter.hold(*_tensors(held))
        every = len(held) == len(self.documents)  # a read of some documents only is not kept
        parts = select(held, wanted) if every and wanted is not None else held
        if (not every or self._final
                or (self.hold_bytes is not None and self._held_bytes > self.hold_bytes)):
            self._forget(layer)
        self._read_ahead(layer + 1, wanted)
        return parts

    @contextmanager
    def final_pass(self) -> Iterator[None]:
        """Within the block, each layer is forgotten once read: no later pass needs it."""
        self._final = True
        try:
            yield
        finally:
            self._final = False

    def close(self) -> None:
        """Ends the request's reads (waiting for one in flight); later reads raise."""
        self._reader.shutdown(wait=True, cancel_futures=True)
        for layer in list(self._held):
            self._forget(layer)
        self._pending.clear()

    def _forget(self, layer: int) -> None:
        parts = self._held.pop(layer)
        self._held_bytes -= tensor_bytes(*_tensors(parts))
        self.meter.release(*_tensors(parts))

    def _take(self, layer: int, wanted: Documents) -> list[LayerKV]:
        """The layer for `wanted` from the read in flight when it covers them, else a new read:
        all documents' parts when the read in flight covered all of them, else `wanted`'s."""
        pending = self._pending.pop(layer, None)
        if pending is not None and pending[0] in (None, wanted):
            return pending[1].result()
        return self._reader.submit(self.source.read_layer, layer, wanted).result()

    def _read_ahead(self, layer: int, wanted: Documents) -> None:
        if layer < self.num_layers and layer not in self._held and layer not in self._pending:
            self._pending[layer] = (wanted, self._reader.submit(self.source.read_layer, layer, wanted))


def _tensors(parts: list[LayerKV]) -> list[torch.Tensor]:
    return [tensor for part in parts for tensor in (part.keys, part.values)]
