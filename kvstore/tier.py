"""The one interface every storage medium implements."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from kvstore.keys import StoreKey
from kvstore.serialization import Header, StoredDocument


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


@runtime_checkable
class Tier(Protocol):
    """A storage medium for stored documents.

    Tiers deal only in the stored form (`StoredDocument`, raw layer tensors) and check what they
    return: a copy whose header, fingerprint or checksum does not match raises `CorruptEntry`
    (`FingerprintMismatch` for another model's copy), an unreachable medium raises
    `TierUnavailable`, a medium out of space raises `TierFull` on `put`. A missing key is `None`.
    `get` hands over tensors the caller owns; layer reads may be views, read-only to the caller.
    Policy (fall-through, back-fill, repair, metrics) lives in `TieredStore`.

    A tier that can fetch one layer of several documents at once (Redis, in one round trip) also
    has `prefetch_layer(readers, layer)`: a hint, after which each of its `readers` reads `layer`
    from what was fetched.
    """

    name: str

    def get(self, key: StoreKey) -> StoredDocument | None:
        """The whole stored document, verified, or None."""
        ...

    def put(self, key: StoreKey, stored: StoredDocument) -> None:
        """Store a document under `key`, replacing any previous copy atomically."""
        ...

    def delete(self, key: StoreKey) -> bool:
        """Remove the copy under `key`; True when there was one."""
        ...

    def contains(self, key: StoreKey) -> bool:
        """Whether a copy exists under `key` (without verifying it)."""
        ...

    def read_header(self, key: StoreKey) -> tuple[Header, torch.Tensor] | None:
        """The verified header and token ids, without reading any layer, or None."""
        ...

    def read_layer(
        self, key: StoreKey, layer: int
    ) -> tuple[Header, dict[str, torch.Tensor]] | None:
        """Layer `layer`'s raw tensors, verified against the header read with them, or None."""
        ...

    def open_reader(self, key: StoreKey) -> LayerReader | None:
        """The copy under `key` opened for layer reads (header and token ids verified), or None."""
        ...
