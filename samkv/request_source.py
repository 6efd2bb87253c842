"""One request's reads of its stored documents: each layer read once, the next read ahead."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager

from samkv.document import DocumentMeta, DocumentSource, LayerKV


class RequestSource:
    """A `DocumentSource` that reads each layer of the request's `source` once.

    A method looks at some layers (its probe) before the assembly reads them all; the layers
    read are kept for the rest of the request, so the store serves each one once. Inside
    `final_pass` (the assembly, the last reader) a layer is handed over and forgotten, so no
    more than the looked-at layers are ever held.

    While the caller works on layer l, layer l + 1 is read on a worker thread: reads are file or
    network I/O, which release the GIL. Every read of `source` runs on that one thread, one at a
    time, so a source meant for one thread (kvstore's `StoreSource`) is used as one. `close`
    waits for a read in flight and ends the worker.
    """

    def __init__(self, source: DocumentSource, num_layers: int) -> None:
        self.source = source
        self.num_layers = num_layers
        self._held: dict[int, list[LayerKV]] = {}
        self._pending: dict[int, Future[list[LayerKV]]] = {}
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="samkv-read")
        self._final = False

    @property
    def documents(self) -> Sequence[DocumentMeta]:
        return self.source.documents

    def read_layer(self, layer: int) -> list[LayerKV]:
        """Layer `layer` of every document, in prompt order; read from `source` only the first time."""
        parts = self._held.get(layer)
        if parts is None:
            pending = self._pending.pop(layer, None) or self._reader.submit(self.source.read_layer, layer)
            parts = pending.result()
            self._held[layer] = parts
        if self._final:
            del self._held[layer]
        self._read_ahead(layer + 1)
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
        self._held.clear()
        self._pending.clear()

    def _read_ahead(self, layer: int) -> None:
        if layer < self.num_layers and layer not in self._held and layer not in self._pending:
            self._pending[layer] = self._reader.submit(self.source.read_layer, layer)
