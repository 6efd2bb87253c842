"""The stored layout: round trips per dtype, int8 error bound, self-description, integrity checks."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors import safe_open

from kvstore import CorruptEntry, FingerprintMismatch, StorageFormat, deserialize, serialize
from kvstore.blob import BufferSource, read_index
from kvstore.codec import decode, encode
from kvstore.disk_layout import read_metadata
from kvstore.redis_layout import from_parts, to_parts
from kvstore.stored_format import LAYOUT_VERSION
from tests.kvstore.kvstore_testing import (
    EMBEDDED_SHAPES,
    FINGERPRINT,
    as_stored,
    assert_same_doc,
    make_doc,
)

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


@pytest.fixture(scope="module")
def embedded_doc():
    return make_doc(1, 300, **EMBEDDED_SHAPES)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_round_trip_is_bit_exact_against_the_cast_input(embedded_doc, dtype):
    blob = serialize(embedded_doc, StorageFormat(dtype))
    restored = deserialize(blob, fingerprint=FINGERPRINT)
    assert_same_doc(restored, as_stored(embedded_doc, DTYPES[dtype]))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_int8_error_stays_within_the_documented_bound(embedded_doc, dtype):
    restored = deserialize(serialize(embedded_doc, StorageFormat(dtype, "int8")))
    eps = {"float16": 2.0**-11, "bfloat16": 2.0**-8}[dtype]
    # keys: scale per (layer, head, channel) over tokens; values: per (layer, head, token)
    k_scale = embedded_doc.keys.abs().amax(dim=-2, keepdim=True) / 127
    v_scale = embedded_doc.values.abs().amax(dim=-1, keepdim=True) / 127
    for name, scale in (("keys", k_scale), ("values", v_scale)):
        got, want = getattr(restored, name), getattr(embedded_doc, name)
        assert got.dtype == DTYPES[dtype]
        err = (got.float() - want).abs()
        bound = scale / 2 + eps * got.float().abs() + 1e-6
        assert bool((err <= bound).all()), f"{name}: worst excess {(err - bound).max().item()}"
        # The bound is not vacuous: the error really is of the order of the scale.
        assert err.max().item() > 0.1 * scale.max().item()
    assert torch.equal(restored.summary_queries, embedded_doc.summary_queries.to(DTYPES[dtype]))
    assert torch.equal(restored.token_ids, embedded_doc.token_ids)


def test_int8_halves_the_stored_size(embedded_doc):
    fp16 = len(serialize(embedded_doc))
    int8 = len(serialize(embedded_doc, StorageFormat("float16", "int8")))
    assert int8 < 0.6 * fp16


def test_blob_is_self_describing_and_lazily_readable(embedded_doc, tmp_path):
    path = tmp_path / "doc.safetensors"
    path.write_bytes(serialize(embedded_doc, StorageFormat("bfloat16")))
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        names = set(f.keys())
        layer_7_keys = f.get_tensor("layer.7.k")
    assert meta["format"] == "samkv-document-kv"
    assert meta["layout_version"] == str(LAYOUT_VERSION)
    assert meta["fingerprint"] == FINGERPRINT
    assert meta["storage_dtype"] == "bfloat16"
    assert meta["quantization"] == "none"
    assert meta["prefix_len"] == "17"
    assert (meta["n_layers"], meta["n_kv_heads"], meta["length"], meta["head_dim"]) == (
        "30",
        "3",
        "300",
        "64",
    )
    assert (meta["n_heads"], meta["window"]) == ("9", "8")
    assert len(json.loads(meta["layer_checksums"])) == 30 and len(meta["checksum"]) == 64
    assert names == {"token_ids"} | {f"layer.{i}.{n}" for i in range(30) for n in "kvq"}
    assert torch.equal(layer_7_keys, embedded_doc.keys[7].to(torch.bfloat16))


def _flip_byte(blob: bytes, offset_from_end: int) -> bytes:
    data = bytearray(blob)
    data[-offset_from_end] ^= 0xFF
    return bytes(data)


@pytest.mark.parametrize("checksum", ["xxh3", "crc32", "sha256"])
@pytest.mark.parametrize("offset_from_end", [1, 5000, 200_000])
def test_a_flipped_tensor_byte_is_detected(offset_from_end, checksum):
    blob = serialize(make_doc(2, 300, **EMBEDDED_SHAPES), StorageFormat(checksum=checksum))
    with pytest.raises(CorruptEntry, match="checksum"):
        deserialize(_flip_byte(blob, offset_from_end))


def test_a_truncated_or_foreign_blob_is_corrupt():
    blob = serialize(make_doc(3))
    with pytest.raises(CorruptEntry):
        deserialize(blob[: len(blob) // 2])
    with pytest.raises(CorruptEntry):
        deserialize(b"not a safetensors blob at all")


def test_a_tampered_header_is_detected():
    blob = serialize(make_doc(4))
    meta = read_metadata(blob)
    forged = blob.replace(meta["layer_checksums"][2:10].encode(), b"0" * 8, 1)
    with pytest.raises(CorruptEntry, match="checksum"):
        deserialize(forged)


def test_another_models_blob_is_refused():
    blob = serialize(make_doc(5, fingerprint="other-model"))
    with pytest.raises(FingerprintMismatch):
        deserialize(blob, fingerprint=FINGERPRINT)


@pytest.mark.parametrize("quantization", ["none", "int8"])
def test_parts_round_trip_and_check_each_layer(quantization):
    stored = encode(make_doc(6), StorageFormat("float16", quantization))
    parts = to_parts(stored)
    assert set(parts) == {"header"} | {f"layer.{i}" for i in range(4)}
    again = from_parts(parts)
    assert again.header == stored.header
    for name, tensor in stored.tensors.items():
        assert torch.equal(again.tensors[name], tensor), name
    parts["layer.2"] = parts["layer.3"]
    with pytest.raises(CorruptEntry, match="layer 2 checksum"):
        from_parts(parts)


def test_new_copies_use_xxh3():
    meta = read_metadata(serialize(make_doc(7)))
    assert meta["checksum_algorithm"] == "xxh3"
    assert all(len(s) == 16 for s in json.loads(meta["layer_checksums"]))


@pytest.mark.parametrize(("checksum", "digest_len"), [("crc32", 8), ("sha256", 64)])
def test_crc32_and_sha256_copies_stay_readable(embedded_doc, checksum, digest_len):
    old = serialize(embedded_doc, StorageFormat(checksum=checksum))
    meta = read_metadata(old)
    assert (
        meta["checksum_algorithm"] == checksum
        and len(json.loads(meta["layer_checksums"])[0]) == digest_len
    )
    assert_same_doc(deserialize(old, fingerprint=FINGERPRINT), as_stored(embedded_doc))
    with pytest.raises(CorruptEntry, match="checksum"):
        deserialize(_flip_byte(old, 5000))


def test_an_unknown_checksum_algorithm_is_corrupt():
    blob = serialize(make_doc(7))
    forged = blob.replace(b'"checksum_algorithm":"xxh3"', b'"checksum_algorithm":"xxh9"', 1)
    assert forged != blob
    with pytest.raises(CorruptEntry, match="checksum algorithm"):
        deserialize(forged)


def test_a_blob_with_trailing_bytes_or_a_foreign_dtype_is_corrupt():
    blob = serialize(make_doc(8))
    with pytest.raises(CorruptEntry, match="past its last entry"):
        deserialize(blob + b"\0" * 8)
    forged = blob.replace(b'"dtype":"F16"', b'"dtype":"F64"', 1)
    with pytest.raises(CorruptEntry):
        deserialize(forged)


def test_decode_shares_unquantised_tensors_and_bfloat16_survives_the_parts(embedded_doc):
    stored = encode(embedded_doc, StorageFormat("bfloat16"))
    assert decode(stored).keys.data_ptr() == stored.tensors["k"].data_ptr()  # no copy
    again = from_parts(to_parts(stored))
    for name, tensor in stored.tensors.items():
        assert again.tensors[name].dtype == tensor.dtype and torch.equal(
            again.tensors[name], tensor
        )


def _rewrite_index(blob: bytes, edit) -> bytes:
    """`blob` with its safetensors JSON index passed through `edit` (a dict -> None)."""
    length = struct.unpack("<Q", blob[:8])[0]
    index = json.loads(blob[8 : 8 + length])
    edit(index)
    raw = json.dumps(index).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + blob[8 + length :]


def test_documents_of_one_shape_share_a_checked_index_layout():
    first, second = serialize(make_doc(9)), serialize(make_doc(10))
    assert read_index(BufferSource(first)).layout is read_index(BufferSource(second)).layout


def test_a_known_layout_is_not_reused_for_an_index_that_differs_from_it():
    blob = serialize(make_doc(11))
    deserialize(blob)  # its layout is now known

    def swap_k_and_v(index: dict) -> None:
        k, v = index["layer.1.k"], index["layer.1.v"]
        k["data_offsets"], v["data_offsets"] = v["data_offsets"], k["data_offsets"]

    # Same entry count and data size, every entry in bounds: only the checksum tells.
    with pytest.raises(CorruptEntry, match="layer 1 checksum"):
        deserialize(_rewrite_index(blob, swap_k_and_v))

    def shift_one_entry(index: dict) -> None:
        index["layer.2.q"]["data_offsets"][1] -= 2

    with pytest.raises(CorruptEntry, match="does not fit"):
        deserialize(_rewrite_index(blob, shift_one_entry))
