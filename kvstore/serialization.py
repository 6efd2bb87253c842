"""The stored form of a `DocumentKV`: one self-describing safetensors blob, layout version 1.

Blob entries (one per layer and tensor, so a file can be read one layer at a time):

    token_ids            [L] int64
    layer.{l}.k          [n_kv_heads, L, head_dim]   keys before RoPE (storage dtype, or int8)
    layer.{l}.v          [n_kv_heads, L, head_dim]   values (storage dtype, or int8)
    layer.{l}.q          [n_heads, w, head_dim]      summary queries before RoPE (storage dtype)
    layer.{l}.k_scale    [n_kv_heads, 1, head_dim]   float32, int8 only: one scale per channel
    layer.{l}.v_scale    [n_kv_heads, L, 1]          float32, int8 only: one scale per token

The safetensors metadata holds the `Header`: format name, layout version, model fingerprint,
storage dtype, quantisation, |P|, every shape, and sha256 checksums of the token ids and of each
layer's tensor bytes (so one layer can be verified without reading the others), plus a checksum
over all of them.

Redis keeps the same tensors split into parts (`to_parts`): a `header` part holding `token_ids`
and the metadata, and one `layer.{l}` part per layer, each a small safetensors blob.

int8 quantisation is symmetric, with scale = max|x| / 127 taken per (layer, head, channel) over
the tokens for keys and per (layer, head, token) over the channels for values, so a dequantised
element x̂ of an original element x obeys

    |x̂ - x| <= scale / 2 + eps * |x̂|

where eps is the storage dtype's unit roundoff (2^-11 for float16, 2^-8 for bfloat16), from
rounding the dequantised product to the storage dtype. Summary queries are never quantised:
they cost w/L of the keys and decide which tokens are kept.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, fields
from typing import Literal

import numpy as np
import safetensors.torch
import torch
from safetensors import SafetensorError

from kvstore.errors import CorruptEntry, FingerprintMismatch
from kvstore.keys import fingerprint_hash
from samkv.document import DocumentKV, LayerKV

LAYOUT_VERSION = 1
FORMAT_NAME = "samkv-document-kv"
CHECKSUM_ALGORITHM = "sha256"

StorageDtype = Literal["float16", "bfloat16"]
Quantization = Literal["none", "int8"]

_TORCH_DTYPES: dict[str, torch.dtype] = {"float16": torch.float16, "bfloat16": torch.bfloat16}
_INT8_MAX = 127.0
# A channel or token that is all zeros still needs a non-zero scale to divide by.
_MIN_SCALE = 1e-12


@dataclass(frozen=True)
class StorageFormat:
    """How tensors are stored: float16 or bfloat16, optionally with int8 keys and values."""

    dtype: StorageDtype = "float16"
    quantization: Quantization = "none"

    def __post_init__(self) -> None:
        if self.dtype not in _TORCH_DTYPES:
            raise ValueError(
                f"storage dtype must be one of {sorted(_TORCH_DTYPES)}, not {self.dtype!r}"
            )
        if self.quantization not in ("none", "int8"):
            raise ValueError(f"quantization must be 'none' or 'int8', not {self.quantization!r}")

    @property
    def torch_dtype(self) -> torch.dtype:
        return _TORCH_DTYPES[self.dtype]


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
    checksum: str  # over token_ids_checksum and every layer checksum
    layout_version: int = LAYOUT_VERSION

    @property
    def format(self) -> StorageFormat:
        return StorageFormat(self.storage_dtype, self.quantization)

    def layer_spec(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """Name -> (shape, dtype) of every tensor of one layer, in checksum order."""
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
        meta = {"format": FORMAT_NAME, "checksum_algorithm": CHECKSUM_ALGORITHM}
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
        if meta.get("checksum_algorithm") != CHECKSUM_ALGORITHM:
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
            )
            StorageFormat(header.storage_dtype, header.quantization)
        except (KeyError, ValueError, TypeError) as exc:
            raise CorruptEntry(f"invalid header: {exc}") from exc
        if len(header.layer_checksums) != header.n_layers:
            raise CorruptEntry("header lists a checksum count different from its layer count")
        if _combined_checksum(header.token_ids_checksum, header.layer_checksums) != header.checksum:
            raise CorruptEntry("header checksum does not match its per-layer checksums")
        return header

    def check_fingerprint(self, expected_hash: str) -> None:
        """Raise `FingerprintMismatch` unless this copy was made by the model of `expected_hash`."""
        if fingerprint_hash(self.fingerprint) != expected_hash:
            raise FingerprintMismatch(
                f"stored copy was made by model fingerprint {self.fingerprint!r}, not the key's"
            )


@dataclass(frozen=True)
class StoredDocument:
    """A document's cache exactly as stored: header, token ids and each layer's raw tensors."""

    header: Header
    token_ids: torch.Tensor  # [L] int64
    layers: tuple[dict[str, torch.Tensor], ...]  # per layer: name -> tensor, see Header.layer_spec

    @property
    def nbytes(self) -> int:
        tensors = [self.token_ids, *(t for layer in self.layers for t in layer.values())]
        return sum(t.numel() * t.element_size() for t in tensors)


def _digest(tensors: list[torch.Tensor]) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.contiguous().view(torch.uint8).numpy())
    return h.hexdigest()


def _combined_checksum(token_ids_checksum: str, layer_checksums: tuple[str, ...]) -> str:
    return hashlib.sha256("\n".join((token_ids_checksum, *layer_checksums)).encode()).hexdigest()


def _quantize(x: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 quantisation with one float32 scale per slice along `dim`."""
    x = x.float()
    scale = (x.abs().amax(dim=dim, keepdim=True) / _INT8_MAX).clamp_min(_MIN_SCALE)
    q = torch.round(x / scale).clamp_(-_INT8_MAX, _INT8_MAX).to(torch.int8)
    return q, scale


def encode(doc: DocumentKV, fmt: StorageFormat = StorageFormat()) -> StoredDocument:
    """Cast (and optionally quantise) a document to its stored form, with checksums."""
    dtype = fmt.torch_dtype
    token_ids = doc.token_ids.detach().to("cpu", torch.int64).contiguous()
    # [n_layers, n_heads, w, head_dim]
    queries = doc.summary_queries.detach().to("cpu", dtype).contiguous()
    if fmt.quantization == "int8":
        # keys [n_layers, n_kv_heads, L, head_dim]: scale per channel, over tokens (dim -2);
        # values: scale per token, over channels (dim -1)
        k, k_scale = _quantize(doc.keys.detach().cpu(), dim=-2)
        v, v_scale = _quantize(doc.values.detach().cpu(), dim=-1)
        per_layer = [
            {"k": k[i], "v": v[i], "q": queries[i], "k_scale": k_scale[i], "v_scale": v_scale[i]}
            for i in range(doc.num_layers)
        ]
    else:
        k = doc.keys.detach().to("cpu", dtype).contiguous()
        v = doc.values.detach().to("cpu", dtype).contiguous()
        per_layer = [{"k": k[i], "v": v[i], "q": queries[i]} for i in range(doc.num_layers)]

    n_kv_heads, length, head_dim = doc.keys.shape[1:]
    n_heads, window = doc.summary_queries.shape[1:3]
    token_sum = _digest([token_ids])
    layer_sums = tuple(_digest(list(layer.values())) for layer in per_layer)
    header = Header(
        fingerprint=doc.fingerprint,
        storage_dtype=fmt.dtype,
        quantization=fmt.quantization,
        prefix_len=int(doc.prefix_len),
        n_layers=doc.num_layers,
        n_kv_heads=int(n_kv_heads),
        length=int(length),
        head_dim=int(head_dim),
        n_heads=int(n_heads),
        window=int(window),
        token_ids_checksum=token_sum,
        layer_checksums=layer_sums,
        checksum=_combined_checksum(token_sum, layer_sums),
    )
    return StoredDocument(header, token_ids, tuple(per_layer))


def verify_token_ids(header: Header, token_ids: torch.Tensor) -> None:
    """Raise `CorruptEntry` unless `token_ids` are the ones the header describes."""
    if token_ids.dtype != torch.int64 or tuple(token_ids.shape) != (header.length,):
        raise CorruptEntry("token_ids have the wrong shape or dtype")
    if _digest([token_ids]) != header.token_ids_checksum:
        raise CorruptEntry("token_ids checksum mismatch")


def verify_layer(header: Header, layer: int, tensors: dict[str, torch.Tensor]) -> None:
    """Raise `CorruptEntry` unless `tensors` are exactly layer `layer` as the header describes."""
    if not 0 <= layer < header.n_layers:
        raise IndexError(f"layer {layer} out of range for a {header.n_layers}-layer document")
    spec = header.layer_spec()
    if tensors.keys() != spec.keys():
        raise CorruptEntry(
            f"layer {layer} holds tensors {sorted(tensors)}, expected {sorted(spec)}"
        )
    for name, (shape, dtype) in spec.items():
        if tuple(tensors[name].shape) != shape or tensors[name].dtype != dtype:
            raise CorruptEntry(f"layer {layer} tensor {name!r} has the wrong shape or dtype")
    if _digest([tensors[name] for name in spec]) != header.layer_checksums[layer]:
        raise CorruptEntry(f"layer {layer} checksum mismatch")


def decode_layer(header: Header, tensors: dict[str, torch.Tensor]) -> LayerKV:
    """One stored layer as the engine reads it; unquantised layers are returned without a copy."""
    if header.quantization == "none":
        return LayerKV(tensors["k"], tensors["v"], tensors["q"])
    dtype = header.format.torch_dtype
    keys = (tensors["k"].float() * tensors["k_scale"]).to(dtype)
    values = (tensors["v"].float() * tensors["v_scale"]).to(dtype)
    return LayerKV(keys, values, tensors["q"])


_SAME_SIZE_INT = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    # A plain memcpy through numpy: torch's CPU stack of float16 is far slower than of integers,
    # and its multi-threaded copy stalls badly when other processes hold the cores.
    dtype = tensors[0].dtype
    as_int = _SAME_SIZE_INT[tensors[0].element_size()]
    stacked = np.stack([t.contiguous().view(as_int).numpy() for t in tensors])
    return torch.from_numpy(stacked).view(dtype)


def decode(stored: StoredDocument) -> DocumentKV:
    """The `DocumentKV` a stored document stands for (tensors in the storage dtype)."""
    layers = [decode_layer(stored.header, layer) for layer in stored.layers]
    return DocumentKV(
        token_ids=stored.token_ids,
        keys=_stack([layer.keys for layer in layers]),
        values=_stack([layer.values for layer in layers]),
        summary_queries=_stack([layer.summary_queries for layer in layers]),
        fingerprint=stored.header.fingerprint,
        prefix_len=stored.header.prefix_len,
    )


def read_metadata(blob: bytes) -> dict[str, str]:
    """The metadata of a safetensors blob, read from its JSON header without touching the tensors."""
    # safetensors layout: u64 little-endian header size, then that many bytes of JSON.
    if len(blob) < 8:
        raise CorruptEntry("blob shorter than a safetensors header")
    (size,) = struct.unpack("<Q", blob[:8])
    if size > len(blob) - 8:
        raise CorruptEntry("safetensors header runs past the end of the blob")
    try:
        meta = json.loads(blob[8 : 8 + size]).get("__metadata__") or {}
    except (ValueError, AttributeError) as exc:
        raise CorruptEntry(f"unreadable safetensors header: {exc}") from exc
    return meta


def _load_tensors(blob: bytes) -> dict[str, torch.Tensor]:
    try:
        return safetensors.torch.load(blob)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise CorruptEntry(f"unreadable safetensors data: {exc}") from exc


def layer_entry(layer: int, name: str) -> str:
    """The blob entry name of one layer tensor."""
    return f"layer.{layer}.{name}"


def to_blob(stored: StoredDocument) -> bytes:
    """One safetensors blob holding the whole document."""
    tensors = {"token_ids": stored.token_ids}
    for i, layer in enumerate(stored.layers):
        tensors.update({layer_entry(i, name): t for name, t in layer.items()})
    return safetensors.torch.save(tensors, metadata=stored.header.to_metadata())


def from_blob(blob: bytes, expected_fingerprint_hash: str | None = None) -> StoredDocument:
    """Parse and fully verify a blob made by `to_blob`; any mismatch raises `CorruptEntry`."""
    header = Header.from_metadata(read_metadata(blob))
    if expected_fingerprint_hash is not None:
        header.check_fingerprint(expected_fingerprint_hash)
    tensors = _load_tensors(blob)
    token_ids = tensors.pop("token_ids", None)
    if token_ids is None:
        raise CorruptEntry("blob has no token_ids")
    verify_token_ids(header, token_ids)
    layers = []
    for i in range(header.n_layers):
        names = [n for n in header.layer_spec() if layer_entry(i, n) in tensors]
        layer = {n: tensors.pop(layer_entry(i, n)) for n in names}
        verify_layer(header, i, layer)
        layers.append(layer)
    if tensors:
        raise CorruptEntry(f"blob holds unexpected entries {sorted(tensors)[:3]}")
    return StoredDocument(header, token_ids, tuple(layers))


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
    for i, layer in enumerate(stored.layers):
        parts[layer_part(i)] = safetensors.torch.save(layer, metadata={"layer": str(i)})
    return parts


def header_from_part(part: bytes) -> tuple[Header, torch.Tensor]:
    """Parse and verify a header part: the header and the token ids."""
    header = Header.from_metadata(read_metadata(part))
    token_ids = _load_tensors(part).get("token_ids")
    if token_ids is None:
        raise CorruptEntry("header part has no token_ids")
    verify_token_ids(header, token_ids)
    return header, token_ids


def layer_from_part(header: Header, layer: int, part: bytes) -> dict[str, torch.Tensor]:
    """Parse and verify one layer part against its header."""
    tensors = _load_tensors(part)
    verify_layer(header, layer, tensors)
    return tensors


def from_parts(
    parts: dict[str, bytes], expected_fingerprint_hash: str | None = None
) -> StoredDocument:
    """Parse and fully verify parts made by `to_parts`."""
    if HEADER_PART not in parts:
        raise CorruptEntry("no header part")
    header, token_ids = header_from_part(parts[HEADER_PART])
    if expected_fingerprint_hash is not None:
        header.check_fingerprint(expected_fingerprint_hash)
    if len(parts) != header.n_layers + 1:
        raise CorruptEntry(f"{len(parts) - 1} layer parts for a {header.n_layers}-layer document")
    layers = []
    for i in range(header.n_layers):
        part = parts.get(layer_part(i))
        if part is None:
            raise CorruptEntry(f"layer part {i} missing")
        layers.append(layer_from_part(header, i, part))
    return StoredDocument(header, token_ids, tuple(layers))


def serialize(doc: DocumentKV, fmt: StorageFormat = StorageFormat()) -> bytes:
    """A document as one self-describing safetensors blob."""
    return to_blob(encode(doc, fmt))


def deserialize(blob: bytes, fingerprint: str | None = None) -> DocumentKV:
    """The document in a blob made by `serialize`, verified; `CorruptEntry` if it does not check out.

    With `fingerprint`, a blob made by another model raises `FingerprintMismatch`.
    """
    expected = fingerprint_hash(fingerprint) if fingerprint is not None else None
    return decode(from_blob(blob, expected))
