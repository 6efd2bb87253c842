"""One request's reads of its stored documents: each layer read once."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from samkv.document import DocumentMeta, DocumentSource, LayerKV


class RequestSource:
    """A `DocumentSource` that reads each layer of the request's `source` once.

    A method looks at some layers (its probe) before the assembly reads them all; the layers
    read are kept for the rest of the request, so the store serves each one once. Inside
    `final_pass` (the assembly, the last reader) a layer is handed over and forgotten, so no
    more than the looked-at layers are ever held.
    """

    def __init__(self, source: DocumentSource, num_layers: int) -> None:
        self.source = source
        self.num_layers = num_layers
        self._held: dict[int, list[LayerKV]] = {}
        self._final = False

    @property
    def documents(self) -> Sequence[DocumentMeta]:
        return self.source.documents

    def read_layer(self, layer: int) -> list[LayerKV]:
        """Layer `layer` of every document, in prompt order; read from `source` only the first time."""
        parts = self._held.get(layer)
        if parts is None:
            parts = self.source.read_layer(layer)
            self._held[layer] = parts
        if self._final:
            del self._held[layer]
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
        """Ends the request's reads, letting go of what was held."""
        self._held.clear()
