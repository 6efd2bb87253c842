"""The stored form of a `DocumentKV`, layout version 1: how tensors are stored (`StorageFormat`),
what describes them (`Header`), and the document as stored (`StoredDocument`).

Per layer a stored document holds these tensors (`Header.layer_spec`, which is checksum order):

    k          [n_kv_heads, L, head_dim]   keys before RoPE (storage dtype, or int8)
    v          [n_kv_heads, L, head_dim]   values (storage dtype, or int8)
    q          [n_heads, w, head_dim]      summary queries before RoPE (storage dtype)
    k_scale    [n_kv_heads, 1, head_dim]   float32, int8 only: one scale per channel
    v_scale    [n_kv_heads, L, 1]          float32, int8 only: one scale per token

and, once, its token ids ([L] int64). The `Header` holds the format name, layout version, model
fingerprint, storage dtype, quantisation, |P|, every shape, the checksum algorithm (xxh3; older
copies crc32 or sha256), checksums of the token ids and of each layer's tensor bytes (so one
layer can be verified without reading the others), and a sha256 over all of those. Each tier
writes it as safetensors metadata: the disk tier in one blob per document
(`kvstore/disk_layout.py`), Redis in one part per layer (`kvstore/redis_layout.py`). How a
`DocumentKV` becomes a `StoredDocument` and back is `kvstore/codec.py`.

In memory a `StoredDocument` keeps each tensor name stacked over the layers ([n_layers, ...]),
so a whole document is read straight into the tensors the engine gets, without a second copy.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from functools import cached_property
from typing import Literal

import numpy as np
import torch

from kvstore.checksum import CHECKSUM_ALGORITHMS, DEFAULT_CHECKSUM, ChecksumAlgorithm
from kvstore.errors import CorruptEntry, FingerprintMismatch
from kvstore.keys import fingerprint_hash

LAYOUT_VERSION = 1
FORMAT_NAME = "samkv-document-kv"

StorageDtype = Literal["float16", "bfloat16"]
Quantization = Literal["none", "int8"]

_TORCH_DTYPES: dict[str, torch.dtype] = {"float16": torch.float16, "bfloat16": torch.bfloat16}
# Tensors sharing one buffer each start on a multiple of the largest element size.
_SLOT_ALIGN = 8


@dataclass(frozen=True)
class StorageFormat:
    """How tensors are stored: float16 or bfloat16, optionally with int8 keys and values, and
    which checksum guards them."""

    dtype: StorageDtype = "float16"
    quantization: Quantization = "none"
    checksum: ChecksumAlgorithm = DEFAULT_CHECKSUM

    def __post_init__(self) -> None:
        if self.dtype not in _TORCH_DTYPES:
            raise ValueError(
                f"storage dtype must be one of {sorted(_TORCH_DTYPES)}, not {self.dtype!r}"
            )
        if self.quantization not in ("none", "int8"):
            raise ValueError(f"quantization must be 'none' or 'int8', not {self.quantization!r}")
        if self.checksum not in CHECKSUM_ALGORITHMS:
            raise ValueError(
                f"checksum must be one of {CHECKSUM_ALGORITHMS}, not {self.checksum!r}"
            )

    @property
    def torch_dtype(self) -> torch.dtype:
        return _TORCH_DTYPES[self.dtype]


DEFAULT_FORMAT = StorageFormat()


@dataclass(frozen=True)
class Header:
    """Everything about a stored document except its tensors; kept in the safetensors metadata."""

    fingerprint: str
    storage_dtype: StorageDtype
    quantization: Quantization
    prefix_len: int
    n_layers: int
    n_kv_heads: int
    length: int
    head_dim: int
    n_heads: int
    window: int
    token_ids_checksum: str
    layer_checksums: tuple[str, ...]
    checksum: str  # sha256 over token_ids_checksum and every layer checksum
    checksum_algorithm: ChecksumAlgorithm = DEFAULT_CHECKSUM  # of the token ids and layer checksums
    layout_version: int = LAYOUT_VERSION

    @property
    def format(self) -> StorageFormat:
        return StorageFormat(self.storage_dtype, self.quantization, self.checksum_algorithm)

    def layer_spec(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """Name -> (shape, dtype) of every tensor of one layer, in checksum order."""
        return self._layer_spec

    @cached_property
    def layer_slots(self) -> tuple[tuple[int, int], ...]:
        """Byte range of each `layer_spec` tensor in a buffer holding one layer, aligned."""
        return aligned_ranges(
            math.prod(shape) * dtype.itemsize for shape, dtype in self._layer_spec.values()
        )

    @cached_property
    def _layer_spec(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        kv_shape = (self.n_kv_heads, self.length, self.head_dim)
        q_entry = ((self.n_heads, self.window, self.head_dim), self.format.torch_dtype)
        if self.quantization == "none":
            kv_dtype = self.format.torch_dtype
            return {"k": (kv_shape, kv_dtype), "v": (kv_shape, kv_dtype), "q": q_entry}
        return {
            "k": (kv_shape, torch.int8),
            "v": (kv_shape, torch.int8),
            "q": q_entry,
            "k_scale": ((self.n_kv_heads, 1, self.head_dim), torch.float32),
            "v_scale": ((self.n_kv_heads, self.length, 1), torch.float32),
        }

    def to_metadata(self) -> dict[str, str]:
        """The header as the string mapping a safetensors blob carries."""
        meta = {"format": FORMAT_NAME}
        for f in fields(self):
            value = getattr(self, f.name)
            meta[f.name] = json.dumps(list(value)) if isinstance(value, tuple) else str(value)
        return meta

    @classmethod
    def from_metadata(cls, meta: dict[str, str] | None) -> Header:
        """Parse and check a header; anything missing, unknown or inconsistent is `CorruptEntry`."""
        if not meta or meta.get("format") != FORMAT_NAME:
            raise CorruptEntry("not a samkv document KV blob (format field missing or wrong)")
        if meta.get("layout_version") != str(LAYOUT_VERSION):
            raise CorruptEntry(f"unsupported layout version {meta.get('layout_version')!r}")
        if meta.get("checksum_algorithm") not in CHECKSUM_ALGORITHMS:
            raise CorruptEntry(f"unsupported checksum algorithm {meta.get('checksum_algorithm')!r}")
        try:
            header = cls(
                fingerprint=meta["fingerprint"],
                storage_dtype=meta["storage_dtype"],  # type: ignore[arg-type]
                quantization=meta["quantization"],  # type: ignore[arg-type]
                prefix_len=int(meta["prefix_len"]),
                n_layers=int(meta["n_layers"]),
                n_kv_heads=int(meta["n_kv_heads"]),
                length=int(meta["length"]),
                head_dim=int(meta["head_dim"]),
                n_heads=int(meta["n_heads"]),
                window=int(meta["window"]),
                token_ids_checksum=meta["token_ids_checksum"],
                layer_checksums=tuple(json.loads(meta["layer_checksums"])),
                checksum=meta["checksum"],
                checksum_algorithm=meta["checksum_algorithm"],  # type: ignore[arg-type]
            )
            StorageFormat(header.storage_dtype, header.quantization)
        except (KeyError, ValueError, TypeError) as exc:
            raise CorruptEntry(f"invalid header: {exc}") from exc
        if len(header.layer_checksums) != header.n_layers:
            raise CorruptEntry("header lists a checksum count different from its layer count")
        if combined_checksum(header.token_ids_checksum, header.layer_checksums) != header.checksum:
            raise CorruptEntry("header checksum does not match its per-layer checksums")
        return header

    def check_fingerprint(self, expected_hash: str) -> None:
        """Raise `FingerprintMismatch` unless this copy was made by the model of `expected_hash`."""
        if fingerprint_hash(self.fingerprint) != expected_hash:
            raise FingerprintMismatch(
                f"stored copy was made by model fingerprint {self.fingerprint!r}, not the key's"
            )

    def check_layer(self, layer: int) -> None:
        """Raise `IndexError` unless the document has layer `layer`."""
        if not 0 <= layer < self.n_layers:
            raise IndexError(f"layer {layer} out of range for a {self.n_layers}-layer document")


@dataclass(frozen=True)
class StoredDocument:
    """A document's cache exactly as stored: header, token ids and every layer's raw tensors.

    Each tensor name of `Header.layer_spec` is kept stacked over the layers, [n_layers, *shape].
    """

    header: Header
    token_ids: torch.Tensor  # [L] int64
    tensors: dict[str, torch.Tensor]  # name -> [n_layers, *layer shape], in layer_spec order

    def layer(self, layer: int) -> dict[str, torch.Tensor]:
        """Layer `layer`'s tensors, as views (no copy); the same dict on every call."""
        return self._layers[layer]

    @cached_property
    def _layers(self) -> tuple[dict[str, torch.Tensor], ...]:
        # Made once: a memory-tier entry serves its layers to every request that reads it.
        return tuple(
            {name: t[i] for name, t in self.tensors.items()} for i in range(self.header.n_layers)
        )

    @property
    def nbytes(self) -> int:
        tensors = [self.token_ids, *self.tensors.values()]
        return sum(t.numel() * t.element_size() for t in tensors)

    def clone(self) -> StoredDocument:
        """A copy sharing no memory with this one."""
        tensors = {name: t.clone() for name, t in self.tensors.items()}
        return StoredDocument(self.header, self.token_ids.clone(), tensors)

    @classmethod
    def from_layers(
        cls, header: Header, token_ids: torch.Tensor, layers: Sequence[dict[str, torch.Tensor]]
    ) -> StoredDocument:
        """A document from per-layer tensors (as `layer` returns them), stacked into new memory."""
        names = header.layer_spec()
        return cls(
            header, token_ids, {name: _stack([layer[name] for layer in layers]) for name in names}
        )


def aligned_ranges(sizes: Iterable[int]) -> tuple[tuple[int, int], ...]:
    """Byte ranges for buffers of `sizes` laid out one after the other in one allocation, each
    starting on a multiple of 8 bytes so that any dtype can view it."""
    ranges, end = [], 0
    for size in sizes:
        start = -(-end // _SLOT_ALIGN) * _SLOT_ALIGN
        end = start + size
        ranges.append((start, end))
    return tuple(ranges)


def combined_checksum(token_ids_checksum: str, layer_checksums: tuple[str, ...]) -> str:
    """The header's own checksum: sha256 over the token ids' and every layer's checksum."""
    return hashlib.sha256("\n".join((token_ids_checksum, *layer_checksums)).encode()).hexdigest()


_SAME_SIZE_INT = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    # A plain memcpy through numpy: torch's CPU stack of float16 is far slower than of integers,
    # and its multi-threaded copy stalls badly when other processes hold the cores.
    dtype = tensors[0].dtype
    as_int = _SAME_SIZE_INT[tensors[0].element_size()]
    stacked = np.stack([t.contiguous().view(as_int).numpy() for t in tensors])
    return torch.from_numpy(stacked).view(dtype)
