"""Reading a stored document out of safetensors blobs, whichever tier's layout placed it there:
the header, verified token ids, and verified layers copied once into memory the caller owns.

Each layout (`kvstore/disk_layout.py`, `kvstore/redis_layout.py`) finds where its tensors lie;
what is read and how it is checked is the same for both.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from kvstore.blob import BlobIndex, ByteSource, entry_offset, read_index, read_ranges
from kvstore.checksum import digest
from kvstore.errors import CorruptEntry
from kvstore.stored_format import Header, aligned_ranges

# numpy has every storage dtype but bfloat16, which travels as int16 and is viewed back in torch.
_NUMPY_DTYPES = {
    torch.float16: np.float16,
    torch.bfloat16: np.int16,
    torch.float32: np.float32,
    torch.int8: np.int8,
    torch.int64: np.int64,
}


def read_header(src: ByteSource) -> tuple[Header, BlobIndex]:
    """A blob's checked header, and its index to read tensors with."""
    index = read_index(src)
    return Header.from_metadata(index.metadata), index


def verified_token_ids(header: Header, token_ids: np.ndarray) -> torch.Tensor:
    """The int64 array `token_ids` as a tensor (no copy), if they are the ones the header
    describes; `CorruptEntry` if not."""
    # Checked in numpy: torch's views for byte_view cost more than hashing 300 ids.
    if digest(header.checksum_algorithm, [token_ids.view(np.uint8)]) != header.token_ids_checksum:
        raise CorruptEntry("token_ids checksum mismatch")
    return torch.from_numpy(token_ids)


def read_token_ids(src: ByteSource, index: BlobIndex, header: Header) -> torch.Tensor:
    """A blob's `token_ids` entry, verified."""
    token_ids = np.empty(header.length, np.int64)
    # Only this entry: a Redis header part holds nothing else.
    offset = index.data_start + entry_offset(index, "token_ids", (header.length,), torch.int64)
    read_ranges(src, [(offset, token_ids.view(np.uint8))])
    return verified_token_ids(header, token_ids)


def verify_layer(header: Header, layer: int, buffers: Sequence[np.ndarray]) -> None:
    """Raise `CorruptEntry` unless a layer's tensor bytes (in spec order) match its checksum."""
    if digest(header.checksum_algorithm, buffers) != header.layer_checksums[layer]:
        raise CorruptEntry(f"layer {layer} checksum mismatch")


def _as_tensor(
    buffer: np.ndarray, offset: int, dtype: torch.dtype, shape: tuple[int, ...]
) -> torch.Tensor:
    """A tensor over the bytes of the uint8 array `buffer` from `offset` on (no copy)."""
    # One numpy constructor costs half of slicing, viewing and reshaping, and a fraction of
    # torch's per-call overhead, which adds up over every tensor of every layer of every document.
    tensor = torch.from_numpy(np.ndarray(shape, _NUMPY_DTYPES[dtype], buffer, offset))
    return tensor if tensor.dtype == dtype else tensor.view(dtype)


def read_layer(
    src: ByteSource, index: BlobIndex, header: Header, layer: int, offsets: Sequence[int]
) -> dict[str, torch.Tensor]:
    """One layer (its tensors at `offsets` in the data, spec order) in new memory, verified:
    one read per run of adjacent entries, one checksum."""
    # One allocation for the whole layer; its tensors are views of it.
    buffer = np.empty(header.layer_slots[-1][1], np.uint8)
    slots = [buffer[a:b] for a, b in header.layer_slots]
    start = index.data_start
    read_ranges(src, [(start + offset, slot) for offset, slot in zip(offsets, slots)])
    verify_layer(header, layer, slots)
    return {
        name: _as_tensor(buffer, a, dtype, shape)
        for (name, (shape, dtype)), (a, _) in zip(header.layer_spec().items(), header.layer_slots)
    }


def stacked_buffers(header: Header) -> tuple[dict[str, np.ndarray], dict[str, torch.Tensor]]:
    """Every layer's tensors stacked per name in one new allocation: as [n_layers, row bytes]
    uint8 arrays to read into, and as the [n_layers, ...] tensors over the same memory."""
    spec = header.layer_spec()
    # One allocation for the whole document: fresh memory costs page faults per allocation as
    # well as per page, and one buffer read into measured ~20% faster than one per tensor name.
    rows = [math.prod(shape) * dtype.itemsize for shape, dtype in spec.values()]
    ranges = aligned_ranges(header.n_layers * row for row in rows)
    buffer = np.empty(ranges[-1][1], np.uint8)
    stacked = {
        name: buffer[a:b].reshape(header.n_layers, row)
        for name, row, (a, b) in zip(spec, rows, ranges)
    }
    tensors = {
        name: _as_tensor(buffer, a, dtype, (header.n_layers, *shape))
        for (name, (shape, dtype)), (a, _) in zip(spec.items(), ranges)
    }
    return stacked, tensors
