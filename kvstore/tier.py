"""The one interface every storage medium implements."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from kvstore.keys import StoreKey
from kvstore.serialization import Header, StoredDocument


@runtime_checkable
class Tier(Protocol):
    """A storage medium for stored documents.

    Tiers deal only in the stored form (`StoredDocument`, raw layer tensors) and check what they
    return: a copy whose header, fingerprint or checksum does not match raises `CorruptEntry`
    (`FingerprintMismatch` for another model's copy), an unreachable medium raises
    `TierUnavailable`, a medium out of space raises `TierFull` on `put`. A missing key is `None`.
    Policy (fall-through, back-fill, repair, metrics) lives in `TieredStore`.
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
