"""The disk tier's layout: a whole stored document as one self-describing safetensors blob.

Blob entries (one per layer and tensor, so a file can be read one layer at a time):

    token_ids            [L] int64
    layer.{l}.{name}     each tensor of `Header.layer_spec` (k, v, q; k_scale, v_scale for int8)

and the `Header` in the safetensors metadata (`kvstore/stored_format.py`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import safetensors.torch
import torch

from kvstore.blob import BlobIndex, BufferSource, ByteSource, entry_offset, read_index, read_ranges
from kvstore.codec import decode, encode
from kvstore.errors import CorruptEntry
from kvstore.keys import fingerprint_hash
from kvstore.stored_format import DEFAULT_FORMAT, Header, StorageFormat, StoredDocument
from kvstore.stored_reads import (
    read_header,
    read_layer,
    stacked_buffers,
    verified_token_ids,
    verify_layer,
)
from samkv.document import DocumentKV


def layer_entry(layer: int, name: str) -> str:
    """The blob entry name of one layer tensor."""
    return f"layer.{layer}.{name}"


def to_blob(stored: StoredDocument) -> bytes:
    """One safetensors blob holding the whole document."""
    tensors = {"token_ids": stored.token_ids}
    for name, stacked in stored.tensors.items():
        tensors.update({layer_entry(i, name): t for i, t in enumerate(stacked)})
    return safetensors.torch.save(tensors, metadata=stored.header.to_metadata())


def read_metadata(blob: bytes) -> dict[str, str]:
    """The metadata of a safetensors blob, read from its JSON header without touching the tensors."""
    return read_index(BufferSource(blob)).metadata


class _BlobPlan(NamedTuple):
    """Where a blob's tensors start in its data, every entry checked against the header."""

    token_ids: int
    layers: tuple[tuple[int, ...], ...]  # per layer, its tensors in spec order


def _blob_plan(index: BlobIndex, header: Header) -> _BlobPlan:
    """The plan of a blob made by `to_blob`, made once per index layout and header shape."""
    spec = tuple(header.layer_spec().items())
    key = ("blob", header.length, header.n_layers, spec)
    plan = index.layout.derived.get(key)
    if plan is None:
        plan = _BlobPlan(
            entry_offset(index, "token_ids", (header.length,), torch.int64),
            tuple(
                tuple(
                    entry_offset(index, layer_entry(i, name), shape, dtype)
                    for name, (shape, dtype) in spec
                )
                for i in range(header.n_layers)
            ),
        )
        index.layout.derived[key] = plan
    return plan  # type: ignore[return-value]


def read_blob_layer(
    src: ByteSource, index: BlobIndex, header: Header, layer: int
) -> dict[str, torch.Tensor]:
    """Layer `layer` of a blob made by `to_blob`, in new memory, verified."""
    header.check_layer(layer)
    return read_layer(src, index, header, layer, _blob_plan(index, header).layers[layer])


def read_blob(src: ByteSource, expected_fingerprint_hash: str | None = None) -> StoredDocument:
    """A whole blob made by `to_blob`, each tensor copied once into its stacked place, verified.

    Every entry is read by one `read_ranges` (for a file, one system call), then verified.
    """
    header, index = read_header(src)
    if expected_fingerprint_hash is not None:
        header.check_fingerprint(expected_fingerprint_hash)
    spec = header.layer_spec()
    # `_blob_plan` checks every expected entry (once per layout), so a matching count leaves
    # no stray one.
    if len(index.entries) != 1 + header.n_layers * len(spec):
        raise CorruptEntry(
            f"blob holds {len(index.entries)} entries, its header describes "
            f"{1 + header.n_layers * len(spec)}"
        )
    stacked, tensors = stacked_buffers(header)
    layers = [[stacked[name][i] for name in spec] for i in range(header.n_layers)]
    plan = _blob_plan(index, header)
    start = index.data_start
    token_ids = np.empty(header.length, np.int64)
    placements = [(start + plan.token_ids, token_ids.view(np.uint8))]
    for offsets, slots in zip(plan.layers, layers):
        placements.extend((start + offset, slot) for offset, slot in zip(offsets, slots))
    read_ranges(src, placements)
    token_tensor = verified_token_ids(header, token_ids)
    for i, slots in enumerate(layers):
        verify_layer(header, i, slots)
    return StoredDocument(header, token_tensor, tensors)


def from_blob(blob: bytes, expected_fingerprint_hash: str | None = None) -> StoredDocument:
    """Parse and fully verify a blob made by `to_blob`; any mismatch raises `CorruptEntry`."""
    return read_blob(BufferSource(blob), expected_fingerprint_hash)


def serialize(doc: DocumentKV, fmt: StorageFormat = DEFAULT_FORMAT) -> bytes:
    """A document as one self-describing safetensors blob."""
    return to_blob(encode(doc, fmt))


def deserialize(blob: bytes, fingerprint: str | None = None) -> DocumentKV:
    """The document in a blob made by `serialize`, verified; `CorruptEntry` if it does not check out.

    With `fingerprint`, a blob made by another model raises `FingerprintMismatch`.
    """
    expected = fingerprint_hash(fingerprint) if fingerprint is not None else None
    return decode(from_blob(blob, expected))
