"""The Redis tier's layout: a stored document split into parts, one Redis hash field each.

A `header` part holds `token_ids` and the `Header` (as safetensors metadata); one `layer.{l}`
part per layer holds that layer's tensors (`Header.layer_spec`), each part a small safetensors
blob, so one layer is one field away.
"""

from __future__ import annotations

import safetensors.torch
import torch

from kvstore.blob import BlobIndex, BufferSource, entry_offset, read_index, read_ranges
from kvstore.errors import CorruptEntry
from kvstore.stored_format import Header, StoredDocument
from kvstore.stored_reads import (
    read_header,
    read_layer,
    read_token_ids,
    stacked_buffers,
    verify_layer,
)

HEADER_PART = "header"


def layer_part(layer: int) -> str:
    """The name of one layer's part (a Redis hash field)."""
    return f"layer.{layer}"


def to_parts(stored: StoredDocument) -> dict[str, bytes]:
    """The document split into a header part and one part per layer, each a safetensors blob."""
    parts = {
        HEADER_PART: safetensors.torch.save(
            {"token_ids": stored.token_ids}, metadata=stored.header.to_metadata()
        )
    }
    for i in range(stored.header.n_layers):
        parts[layer_part(i)] = safetensors.torch.save(stored.layer(i), metadata={"layer": str(i)})
    return parts


def header_from_part(part: bytes) -> tuple[Header, torch.Tensor]:
    """Parse and verify a header part: the header and the token ids."""
    src = BufferSource(part)
    header, index = read_header(src)
    return header, read_token_ids(src, index, header)


def _part_index(header: Header, layer: int, part: bytes) -> tuple[BufferSource, BlobIndex]:
    src = BufferSource(part)
    index = read_index(src)
    spec = header.layer_spec()
    if index.entries.keys() != spec.keys():
        raise CorruptEntry(
            f"layer {layer} holds tensors {sorted(index.entries)}, expected {sorted(spec)}"
        )
    return src, index


def _part_plan(index: BlobIndex, header: Header) -> tuple[int, ...]:
    """Where a layer part's tensors (spec order) start in its data, checked against the header,
    found once per index layout and header shape."""
    spec = tuple(header.layer_spec().items())
    key = ("part", spec)
    plan = index.layout.derived.get(key)
    if plan is None:
        plan = tuple(entry_offset(index, name, shape, dtype) for name, (shape, dtype) in spec)
        index.layout.derived[key] = plan
    return plan  # type: ignore[return-value]


def layer_from_part(header: Header, layer: int, part: bytes | None) -> dict[str, torch.Tensor]:
    """Parse and verify one layer part against its header, into new memory; a part missing
    from the copy (None) is `CorruptEntry`."""
    header.check_layer(layer)
    if part is None:
        raise CorruptEntry(f"layer {layer} missing from a Redis copy")
    src, index = _part_index(header, layer, part)
    return read_layer(src, index, header, layer, _part_plan(index, header))


def from_parts(
    parts: dict[str, bytes], expected_fingerprint_hash: str | None = None
) -> StoredDocument:
    """Parse and fully verify parts made by `to_parts`, each layer copied once into its stacked place."""
    if HEADER_PART not in parts:
        raise CorruptEntry("no header part")
    header, token_ids = header_from_part(parts[HEADER_PART])
    if expected_fingerprint_hash is not None:
        header.check_fingerprint(expected_fingerprint_hash)
    if len(parts) != header.n_layers + 1:
        raise CorruptEntry(f"{len(parts) - 1} layer parts for a {header.n_layers}-layer document")

    names = tuple(header.layer_spec())
    stacked, tensors = stacked_buffers(header)
    for i in range(header.n_layers):
        part = parts.get(layer_part(i))
        if part is None:
            raise CorruptEntry(f"layer part {i} missing")
        src, index = _part_index(header, i, part)
        slots = [stacked[name][i] for name in names]
        offsets = _part_plan(index, header)
        read_ranges(src, [(index.data_start + o, slot) for o, slot in zip(offsets, slots)])
        verify_layer(header, i, slots)
    return StoredDocument(header, token_ids, tensors)
