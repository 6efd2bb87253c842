"""Reading safetensors blobs entry by entry, copying each tensor's bytes once, into memory we own.

`safetensors.torch.load` copies every tensor out of the blob before we could place it, and
`safe_open` maps the file and parses its header again on every open. The store instead parses a blob's JSON index
once and copies each entry straight to its final place (a slot of a stacked [n_layers, ...]
tensor, or a fresh tensor for a layer read), from bytes in memory or from an open file alike.

safetensors layout: u64 little-endian index size n, n bytes of JSON
{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {str: str}}, then the data,
offsets relative to its start.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import numpy as np
import torch

from kvstore.errors import CorruptEntry

_INDEX_SIZE = struct.Struct("<Q")
# The dtypes the store writes; anything else in a blob of ours is damage.
_DTYPES = {
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F32": torch.float32,
    "I64": torch.int64,
    "I8": torch.int8,
}
# torch's dtype.itemsize is slow enough to show when indexing a blob of ~100 entries.
_ITEMSIZES = {code: dtype.itemsize for code, dtype in _DTYPES.items()}


class ByteSource(Protocol):
    """Random access to a blob's bytes: in memory, or an open file."""

    size: int

    def read(self, offset: int, length: int) -> bytes:
        """`length` bytes at `offset`; `CorruptEntry` if the blob ends first."""
        ...

    def read_into(self, offset: int, out: np.ndarray) -> None:
        """Fill the uint8 array `out` with the bytes at `offset`; `CorruptEntry` if the blob ends first."""
        ...


class BufferSource:
    """A blob held in memory (a Redis field, a serialised document)."""

    def __init__(self, blob: bytes) -> None:
        self._view = memoryview(blob)
        self.size = len(blob)

    def read(self, offset: int, length: int) -> bytes:
        self._check(offset, length)
        return bytes(self._view[offset : offset + length])

    def read_into(self, offset: int, out: np.ndarray) -> None:
        self._check(offset, out.nbytes)
        out[:] = np.frombuffer(self._view, np.uint8, out.nbytes, offset)

    def _check(self, offset: int, length: int) -> None:
        if offset + length > self.size:
            raise CorruptEntry("blob ends before the entry it indexes")


class Entry(NamedTuple):
    """Where one tensor lies in a blob."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int  # from the start of the blob
    nbytes: int


@dataclass(frozen=True)
class BlobIndex:
    """A parsed safetensors index: the metadata and every entry, checked to tile the data."""

    metadata: dict[str, str]
    entries: dict[str, Entry]


def read_index(src: ByteSource) -> BlobIndex:
    """Parse and check a blob's index; a short, truncated or malformed blob is `CorruptEntry`."""
    if src.size < _INDEX_SIZE.size:
        raise CorruptEntry("blob shorter than a safetensors header")
    (length,) = _INDEX_SIZE.unpack(src.read(0, _INDEX_SIZE.size))
    data_start = _INDEX_SIZE.size + length
    if data_start > src.size:
        raise CorruptEntry("safetensors header runs past the end of the blob")
    try:
        raw = json.loads(src.read(_INDEX_SIZE.size, length))
        metadata = raw.pop("__metadata__", None) or {}
    except (ValueError, AttributeError) as exc:
        raise CorruptEntry(f"unreadable safetensors header: {exc}") from exc
    if not isinstance(metadata, dict):
        raise CorruptEntry("safetensors metadata is not a mapping")
    data_size = src.size - data_start
    entries: dict[str, Entry] = {}
    data_end = 0
    for name, info in raw.items():
        try:
            code = info["dtype"]
            dtype = _DTYPES[code]
            shape = tuple(map(int, info["shape"]))
            begin, end = map(int, info["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptEntry(f"invalid safetensors entry {name!r}: {exc}") from exc
        nbytes = math.prod(shape) * _ITEMSIZES[code]
        if not 0 <= begin <= end <= data_size or end - begin != nbytes:
            raise CorruptEntry(f"entry {name!r} does not fit the blob (truncated?)")
        entries[name] = Entry(dtype, shape, data_start + begin, nbytes)
        data_end = max(data_end, end)
    if data_end != data_size:
        raise CorruptEntry(f"blob holds {data_size - data_end} bytes past its last entry")
    return BlobIndex(metadata, entries)


def read_entry(
    src: ByteSource,
    index: BlobIndex,
    name: str,
    shape: tuple[int, ...],
    dtype: torch.dtype,
    out: np.ndarray,
) -> None:
    """Copy entry `name`, which must have exactly `shape` and `dtype`, into the uint8 array `out`."""
    entry = index.entries.get(name)
    if entry is None:
        raise CorruptEntry(f"entry {name!r} missing")
    if entry.shape != shape or entry.dtype != dtype:
        raise CorruptEntry(f"entry {name!r} has the wrong shape or dtype")
    src.read_into(entry.offset, out)
