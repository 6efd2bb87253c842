"""Checksums of stored tensor bytes, named in each copy's header so older copies stay readable.

crc32 (zlib) is what new copies get: it catches every burst error up to 32 bits, every odd
number of flipped bits and all but 2^-32 of other damage, which is what a cache needs against
bit rot, torn or truncated files and swapped fields, and it runs about twice as fast as sha256
(the fastest checksum the standard library and our dependencies offer). Copies written with
sha256 before the switch are still verified with sha256.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterable
from typing import Literal

import numpy as np
import torch

ChecksumAlgorithm = Literal["crc32", "sha256"]
CHECKSUM_ALGORITHMS: tuple[ChecksumAlgorithm, ...] = ("crc32", "sha256")


def byte_view(tensor: torch.Tensor) -> np.ndarray:
    """The bytes of a contiguous tensor as a flat uint8 array sharing its memory (no copy)."""
    # view (not reshape), so a non-contiguous tensor fails instead of being silently copied;
    # through uint8, since numpy has no bfloat16.
    return tensor.view(-1).view(torch.uint8).numpy()


def digest(algorithm: ChecksumAlgorithm, buffers: Iterable[np.ndarray]) -> str:
    """Hex checksum of the buffers' bytes, concatenated in order."""
    if algorithm == "crc32":
        crc = 0
        for buffer in buffers:
            crc = zlib.crc32(buffer, crc)
        return f"{crc:08x}"
    if algorithm == "sha256":
        h = hashlib.sha256()
        for buffer in buffers:
            h.update(buffer)
        return h.hexdigest()
    raise ValueError(f"checksum must be one of {CHECKSUM_ALGORITHMS}, not {algorithm!r}")


def tensor_digest(algorithm: ChecksumAlgorithm, tensors: Iterable[torch.Tensor]) -> str:
    """Hex checksum of the tensors' bytes, concatenated in order."""
    return digest(algorithm, (byte_view(t.contiguous()) for t in tensors))
