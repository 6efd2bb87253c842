"""Reading safetensors blobs entry by entry, copying each tensor's bytes once, into memory we own.

`safetensors.torch.load` copies every tensor out of the blob before we could place it, and
`safe_open` maps the file and parses its header again on every open. The store instead parses a blob's JSON index
once and copies each entry straight to its final place (a slot of a stacked [n_layers, ...]
tensor, or a fresh tensor for a layer read), from bytes in memory or from an open file alike.
Entries that lie next to each other in the blob are read in one scattering call (`read_ranges`),
so a whole file is one system call whatever order its entries were written in. An index is
checked once per layout (`IndexLayout`): every document of one shape and length has the same.

safetensors layout: u64 little-endian index size n, n bytes of JSON
{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {str: str}}, then the data,
offsets relative to its start.
"""

from __future__ import annotations

import json
import math
import struct
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import numpy as np
import torch

from kvstore.errors import CorruptEntry

_INDEX_SIZE = struct.Struct("<Q")
_FIRST_READ = 16 * 1024
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

    def read_into(self, offset: int, outs: Sequence[np.ndarray]) -> None:
        """Fill the uint8 arrays `outs`, one after the other, with the bytes from `offset` on;
        `CorruptEntry` if the blob ends first."""
        ...


class BufferSource:
    """A blob held in memory (a Redis field, a serialised document)."""

    def __init__(self, blob: bytes) -> None:
        self._view = memoryview(blob)
        self.size = len(blob)

    def read(self, offset: int, length: int) -> bytes:
        self._check(offset, length)
        return bytes(self._view[offset : offset + length])

    def read_into(self, offset: int, outs: Sequence[np.ndarray]) -> None:
        for out in outs:
            self._check(offset, out.nbytes)
            out[:] = np.frombuffer(self._view, np.uint8, out.nbytes, offset)
            offset += out.nbytes

    def _check(self, offset: int, length: int) -> None:
        if offset + length > self.size:
            raise CorruptEntry("blob ends before the entry it indexes")


class Entry(NamedTuple):
    """Where one tensor lies in a blob."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int  # from the start of the data (see `BlobIndex.data_start`)
    nbytes: int


class IndexLayout:
    """The checked entries of a blob's index, shared (read-only) by every blob whose index lists
    the same entries over the same data size: every document of one shape and format.

    `derived` keeps what readers compute from the entries alone (offset plans), so that work
    too is done once per layout rather than once per read.
    """

    def __init__(self, entries: dict[str, Entry]) -> None:
        self.entries = entries
        self.derived: dict[Hashable, object] = {}


@dataclass(frozen=True)
class BlobIndex:
    """A parsed safetensors index: the metadata and every entry, checked to tile the data."""

    metadata: dict[str, str]
    layout: IndexLayout
    data_start: int  # where the data (and entry offsets) start in the blob

    @property
    def entries(self) -> dict[str, Entry]:
        return self.layout.entries


# Checked layouts by (entry count, data size), each with the raw JSON entries it was checked
# from. A document's index has ~100 entries; checking them and planning the reads in Python took
# a fifth of the time of reading its 7 MB from the page cache, where comparing the parsed JSON
# with a known layout is one C call. Documents differ in length, hence in data size: room for
# that many lengths, a few layouts each.
_LAYOUTS: OrderedDict[tuple[int, int], list[tuple[dict, IndexLayout]]] = OrderedDict()
_MAX_LAYOUT_KEYS = 128
_MAX_LAYOUTS_PER_KEY = 4


def read_index(src: ByteSource) -> BlobIndex:
    """Parse and check a blob's index; a short, truncated or malformed blob is `CorruptEntry`."""
    if src.size < _INDEX_SIZE.size:
        raise CorruptEntry("blob shorter than a safetensors header")
    # The size and the index of a document's blob (~8 KiB) usually come in one read.
    head = src.read(0, min(src.size, _FIRST_READ))
    (length,) = _INDEX_SIZE.unpack_from(head)
    data_start = _INDEX_SIZE.size + length
    if data_start > src.size:
        raise CorruptEntry("safetensors header runs past the end of the blob")
    if data_start > len(head):
        head = src.read(0, data_start)
    try:
        raw = json.loads(head[_INDEX_SIZE.size : data_start])
        metadata = raw.pop("__metadata__", None) or {}
    except (ValueError, AttributeError) as exc:
        raise CorruptEntry(f"unreadable safetensors header: {exc}") from exc
    if not isinstance(metadata, dict):
        raise CorruptEntry("safetensors metadata is not a mapping")
    return BlobIndex(metadata, _layout(raw, src.size - data_start), data_start)


def _layout(raw: dict, data_size: int) -> IndexLayout:
    """The checked layout of these raw JSON entries: a known one if they equal its, else new."""
    key = (len(raw), data_size)
    known = _LAYOUTS.get(key)
    if known is not None:
        for known_raw, layout in known:
            if known_raw == raw:
                return layout
    layout = IndexLayout(_check_entries(raw, data_size))
    # Races between threads only add a duplicate or drop an entry: both harmless.
    same_key = _LAYOUTS.setdefault(key, [])
    same_key.append((raw, layout))
    del same_key[:-_MAX_LAYOUTS_PER_KEY]
    if len(_LAYOUTS) > _MAX_LAYOUT_KEYS:
        _LAYOUTS.popitem(last=False)
    return layout


def _check_entries(raw: dict, data_size: int) -> dict[str, Entry]:
    """Every entry, checked to lie inside the data and to end exactly where it does."""
    entries: dict[str, Entry] = {}
    data_end = 0
    for name, info in raw.items():
        try:
            code = info["dtype"]
            shape = tuple(info["shape"])
            begin, end = info["data_offsets"]
            nbytes = math.prod(shape) * _ITEMSIZES[code]
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptEntry(f"invalid safetensors entry {name!r}: {exc}") from exc
        # JSON numbers other than ints (or a shape of strings, which math.prod repeats) end here.
        if (
            type(begin) is not int
            or type(end) is not int
            or type(nbytes) is not int
            or not 0 <= begin <= end <= data_size
            or end - begin != nbytes
        ):
            raise CorruptEntry(f"entry {name!r} does not fit the blob (truncated?)")
        entries[name] = Entry(_DTYPES[code], shape, begin, nbytes)
        data_end = max(data_end, end)
    if data_end != data_size:
        raise CorruptEntry(f"blob holds {data_size - data_end} bytes past its last entry")
    return entries


def entry_offset(index: BlobIndex, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> int:
    """Where entry `name`, which must have exactly `shape` and `dtype`, starts in the data
    (add `index.data_start` for the blob)."""
    entry = index.entries.get(name)
    if entry is None:
        raise CorruptEntry(f"entry {name!r} missing")
    if entry.shape != shape or entry.dtype != dtype:
        raise CorruptEntry(f"entry {name!r} has the wrong shape or dtype")
    return entry.offset


def read_ranges(src: ByteSource, placements: Iterable[tuple[int, np.ndarray]]) -> None:
    """Fill each uint8 array with the blob's bytes at its offset (in the blob).

    Arrays whose ranges are adjacent in the blob are filled by one `read_into`: a blob's entries
    tile its data, so reading all of them is one call, and a layer's are one call per run.
    """
    start, end, run = 0, -1, []
    for offset, out in sorted(placements, key=lambda placement: placement[0]):
        if offset != end:
            if run:
                src.read_into(start, run)
            start, run = offset, []
        run.append(out)
        end = offset + out.nbytes
    if run:
        src.read_into(start, run)
