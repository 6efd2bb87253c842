"""Reading a request's documents layer by layer: `DocumentReader` for one document, `StoreSource`
for all of them, in prompt order, as the engine's `DocumentSource`."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from kvstore.codec import decode_layer
from kvstore.errors import CorruptEntry
from kvstore.keys import StoreKey
from kvstore.stored_format import Header, StoredDocument
from kvstore.tier import LayerReader, Tier
from samkv.document import DocumentMeta, LayerKV, select

if TYPE_CHECKING:
    from kvstore.store import TieredStore


class DocumentReader:
    """One document of one request, read layer by layer, pass after pass; one thread.

    Opening locates the document at the fastest tier holding a copy whose header checks out
    (or re-encodes it there and then, so no document can turn out missing mid-request); only
    the header and token ids are read. Each layer is then read from that copy, falling through
    to slower tiers if it fails meanwhile, and at the end to re-encoding; a re-encoded copy is
    pinned in process memory for the rest of the request. With `backfill`, a document read
    from a slower tier is copied to the faster ones once one pass has read all its layers from
    one copy. The store's policy decides what a failed read, a discard and a repair do.
    """

    header: Header  # as verified at open
    token_ids: torch.Tensor  # [L] int64

    def __init__(
        self, store: TieredStore, key: StoreKey, text: str | None, *, backfill: bool
    ) -> None:
        self.key = key
        self._store = store
        self._text = text
        self._reader: LayerReader | None = None  # the copy layers are read through
        self._reader_tier = 0  # index of the tier `_reader` reads
        self._collected: dict[int, dict[str, torch.Tensor]] | None = None  # kept for back-fill
        self._pinned: StoredDocument | None = None  # a re-encoded copy, in process memory
        self._deletes = 0
        self._tier = self._open(backfill)  # index of the tier layers are read from
        self.meta = DocumentMeta(self.token_ids, self.header.fingerprint, self.header.prefix_len)

    @property
    def tier_name(self) -> str:
        """The tier layers are read from now ("pinned" for a re-encoded copy)."""
        return "pinned" if self._pinned is not None else self._store.tiers[self._tier].name

    @property
    def open_copy(self) -> tuple[int, LayerReader] | None:
        """The tier index and reader of the copy the next layer will be read through, if one is
        open (for batching one layer's reads over a request's documents)."""
        if self._pinned is not None or self._reader is None:
            return None
        return self._reader_tier, self._reader

    def read_layer(self, layer: int) -> LayerKV:
        """Layer `layer`, in the storage dtype, from the first copy that serves it."""
        if self._pinned is not None:
            return decode_layer(self._pinned.header, self._pinned.layer(layer))
        tiers = self._store.tiers
        for i in range(self._tier, len(tiers)):
            tier = tiers[i]
            start = time.perf_counter()
            found = self._store.read_tier(
                tier, self.key, lambda i=i, tier=tier: self._read_from(i, tier, layer)
            )
            if found is None:
                self._close_reader()
                continue
            header, tensors = found
            if header.length != self.header.length:
                self._close_reader()
                self._store.discard(
                    tier,
                    self.key,
                    CorruptEntry("copy's length differs from its header read at open"),
                )
                continue
            nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
            self._store.metrics.read(tier.name, nbytes, time.perf_counter() - start, "layer")
            if i != self._tier:
                self._tier, self._collected = i, None  # layers from two copies make no back-fill
            if layer == header.n_layers - 1:
                self._reader.close()  # end of a pass: the next read opens the copy again
            self._collect(header, layer, tensors)
            return decode_layer(header, tensors)
        self._pin(self._store.repair(self.key, self._text))
        return decode_layer(self._pinned.header, self._pinned.layer(layer))

    def end_pass(self) -> None:
        """Close the copy held open for a pass that did not read this document's last layer;
        the next read opens it again."""
        self._close_reader()

    def _open(self, backfill: bool) -> int:
        """Locate the document; the index of the tier it was found at."""
        store = self._store
        for i, tier in enumerate(store.tiers):
            start = time.perf_counter()
            reader = store.read_tier(tier, self.key, lambda t=tier: t.open_reader(self.key))
            if reader is not None:
                nbytes = reader.token_ids.numel() * reader.token_ids.element_size()
                store.metrics.hit(tier.name, nbytes, time.perf_counter() - start, "header")
                self.header, self.token_ids = reader.header, reader.token_ids
                self._reader, self._reader_tier = reader, i
                self._collected = {} if backfill and i > 0 else None
                self._deletes = store.deletes
                return i
        self._pin(store.repair(self.key, self._text))
        return 0

    def _pin(self, stored: StoredDocument) -> None:
        self._pinned = stored
        self.header, self.token_ids = stored.header, stored.token_ids

    def _read_from(
        self, i: int, tier: Tier, layer: int
    ) -> tuple[Header, dict[str, torch.Tensor]] | None:
        """Layer `layer` through the reader on tier `i`, opening one there if need be."""
        if self._reader is None or self._reader_tier != i:
            self._close_reader()
            reader = tier.open_reader(self.key)
            if reader is None:
                return None
            self._reader, self._reader_tier = reader, i
        return self._reader.read_layer(layer)

    def _close_reader(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def _collect(self, header: Header, layer: int, tensors: dict[str, torch.Tensor]) -> None:
        if self._collected is None:
            return
        self._collected[layer] = tensors
        if len(self._collected) == header.n_layers:
            layers = [self._collected[i] for i in range(header.n_layers)]
            stored = StoredDocument.from_layers(header, self.token_ids, layers)
            self._collected = None
            self._store.backfill(self.key, stored, self._store.tiers[: self._tier], self._deletes)


class StoreSource:
    """The `DocumentSource` the engine reads a request's documents through; one request, one thread."""

    def __init__(self, store: TieredStore, documents: list[DocumentReader]) -> None:
        self._store = store
        self._documents = documents

    @property
    def documents(self) -> list[DocumentMeta]:
        return [doc.meta for doc in self._documents]

    @property
    def num_layers(self) -> int:
        return self._documents[0].header.n_layers if self._documents else 0

    @property
    def tiers(self) -> list[str]:
        """The tier each document is currently read from ("pinned" for a re-encoded copy)."""
        return [doc.tier_name for doc in self._documents]

    def read_layer(self, layer: int, documents: Sequence[int] | None = None) -> list[LayerKV]:
        """Layer `layer` of the documents at `documents` (every one for None), in that order,
        in the storage dtype; the others are not read."""
        readers = select(self._documents, documents)
        self._prefetch(readers, layer)
        parts = [doc.read_layer(layer) for doc in readers]
        if documents is not None and layer == self.num_layers - 1:
            # The pass ends here for the documents it skipped too: close the copies they hold open.
            for doc in set(self._documents) - set(readers):
                doc.end_pass()
        return parts

    def _prefetch(self, documents: list[DocumentReader], layer: int) -> None:
        """Let each tier that can fetch one layer of several documents at once do so."""
        groups: dict[int, list[LayerReader]] = {}
        for doc in documents:
            if (open_copy := doc.open_copy) is not None:
                groups.setdefault(open_copy[0], []).append(open_copy[1])
        for i, readers in groups.items():
            if len(readers) < 2:
                continue
            tier = self._store.tiers[i]
            start = time.perf_counter()
            if tier.prefetch_layer(readers, layer):
                self._store.metrics.read(tier.name, 0, time.perf_counter() - start, "prefetch")
