"""The one interface every storage medium implements: `Tier`, and `LayerReader` for its copies."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Protocol

import torch

from kvstore.keys import StoreKey
from kvstore.stored_format import Header, StoredDocument


class LayerReader(Protocol):
    """One stored copy, opened for one request to read layer by layer, pass after pass.

    The header and token ids were verified at open; each layer is verified as it is read, against
    the header it was read with (which a rewrite of the copy since the open may have changed).
    """

    header: Header
    token_ids: torch.Tensor  # [L] int64

    def read_layer(self, layer: int) -> tuple[Header, dict[str, torch.Tensor]] | None:
        """Layer `layer`'s raw tensors and the header they were verified against, or None if the
        copy is gone."""
        ...

    def close(self) -> None:
        """End a pass: release what the reader holds open (a file). A later `read_layer` opens
        the copy again, and may then return a newer header."""
        ...


class Tier(ABC):
    """A storage medium for stored documents.

    Tiers deal only in the stored form (`StoredDocument`, raw layer tensors) and check what they
    return: a copy whose header, fingerprint or checksum does not match raises `CorruptEntry`
    (`FingerprintMismatch` for another model's copy), an unreachable medium raises
    `TierUnavailable`, a medium out of space raises `TierFull` on `put`. A missing key is `None`.
    `get` hands over tensors the caller owns; layer reads may be views, read-only to the caller.
    Policy (fall-through, back-fill, repair, metrics) lives in `TieredStore` and
    `DocumentReader`.

    The abstract methods are what every medium must do; the others are optional capabilities
    whose defaults suit a medium without them (nothing to prefetch, no page cache, nothing to
    close), so the store calls them on every tier alike.
    """

    name: str

    @abstractmethod
    def get(self, key: StoreKey) -> StoredDocument | None:
        """The whole stored document, verified, or None."""

    @abstractmethod
    def put(self, key: StoreKey, stored: StoredDocument) -> None:
        """Store a document under `key`, replacing any previous copy atomically."""

    @abstractmethod
    def delete(self, key: StoreKey) -> bool:
        """Remove the copy under `key`; True when there was one."""

    @abstractmethod
    def contains(self, key: StoreKey) -> bool:
        """Whether a copy exists under `key` (without verifying it)."""

    @abstractmethod
    def read_header(self, key: StoreKey) -> tuple[Header, torch.Tensor] | None:
        """The verified header and token ids, without reading any layer, or None."""

    @abstractmethod
    def read_layer(
        self, key: StoreKey, layer: int
    ) -> tuple[Header, dict[str, torch.Tensor]] | None:
        """Layer `layer`'s raw tensors, verified against the header read with them, or None."""

    @abstractmethod
    def open_reader(self, key: StoreKey) -> LayerReader | None:
        """The copy under `key` opened for layer reads (header and token ids verified), or None."""

    def prefetch_layer(self, readers: Sequence[LayerReader], layer: int) -> bool:
        """A hint that each of `readers` (this tier's) is about to read `layer`: a tier that can
        fetch one layer of several copies at once (Redis, in one round trip) does so, and each
        reader then reads from what was fetched. True when the tier took the hint; by default
        it does not, and each reader reads on its own."""
        return False

    def drop_page_cache(self) -> int:
        """Ask the OS to evict this tier's files from its page cache; the number of files.
        A tier without files has none (0)."""
        return 0

    def close(self) -> None:
        """Release connections; the tier is unusable afterwards. Nothing to release by default."""
