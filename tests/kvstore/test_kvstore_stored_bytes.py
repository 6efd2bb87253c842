"""Copies written by earlier code stay readable, and the same document is written the same way.

`stored_v1/` holds, for four storage formats, a small document (`make_doc(100 + i, 12,
n_layers=3)`) as the disk tier's blob (`<format>.blob`), as the Redis tier's parts
(`<format>.parts/<field>`), and as it decoded (`<format>.decoded.safetensors`), all written by
the store at layout version 1 before its modules were reorganised.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import redis
import safetensors.torch
import torch

from kvstore import (
    DiskTier,
    RedisTier,
    StorageFormat,
    TieredStore,
    deserialize,
    make_key,
    serialize,
)
from tests.kvstore.kvstore_testing import FINGERPRINT, make_doc

STORED = Path(__file__).parent / "stored_v1"
FORMATS = {
    "float16-none-xxh3": StorageFormat("float16", "none", "xxh3"),
    "bfloat16-none-crc32": StorageFormat("bfloat16", "none", "crc32"),
    "float16-int8-sha256": StorageFormat("float16", "int8", "sha256"),
    "bfloat16-int8-xxh3": StorageFormat("bfloat16", "int8", "xxh3"),
}


def same_blob(a: bytes, b: bytes) -> bool:
    """Whether two safetensors blobs hold the same index and the same data bytes: safetensors
    writes the metadata's keys in no fixed order, so a blob's bytes differ in that order alone."""

    def split(blob: bytes) -> tuple[dict, bytes]:
        (size,) = struct.unpack_from("<Q", blob)
        return json.loads(blob[8 : 8 + size]), blob[8 + size :]

    return split(a) == split(b)


def fixture_doc(name: str):
    return make_doc(100 + list(FORMATS).index(name), 12, n_layers=3)


def expected(name: str) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(STORED / f"{name}.decoded.safetensors")


def assert_decodes_as_stored(doc, name: str) -> None:
    want = expected(name)
    assert doc.fingerprint == FINGERPRINT and doc.prefix_len == 17
    for field in ("token_ids", "keys", "values", "summary_queries"):
        got = getattr(doc, field)
        assert got.dtype == want[field].dtype, field
        assert torch.equal(got, want[field]), field


@pytest.mark.parametrize("name", FORMATS)
def test_the_same_document_is_written_to_the_same_blob(name):
    blob = serialize(fixture_doc(name), FORMATS[name])
    assert same_blob(blob, (STORED / f"{name}.blob").read_bytes())


@pytest.mark.parametrize("name", FORMATS)
def test_an_old_blob_decodes_as_it_did(name):
    blob = (STORED / f"{name}.blob").read_bytes()
    assert_decodes_as_stored(deserialize(blob, fingerprint=FINGERPRINT), name)


@pytest.mark.parametrize("name", FORMATS)
def test_an_old_file_is_served_by_the_disk_tier(name, tmp_path):
    key = make_key(FINGERPRINT, name)
    DiskTier(tmp_path).write_bytes(key, (STORED / f"{name}.blob").read_bytes())
    store = TieredStore(FINGERPRINT, [DiskTier(tmp_path)])
    assert_decodes_as_stored(store.get(key), name)
    source = store.source([key])
    want = expected(name)
    for layer in range(source.num_layers):
        (got,) = source.read_layer(layer)
        assert torch.equal(got.keys, want["keys"][layer])
        assert torch.equal(got.values, want["values"][layer])
        assert torch.equal(got.summary_queries, want["summary_queries"][layer])


def stored_parts(name: str) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in (STORED / f"{name}.parts").iterdir()}


@pytest.mark.parametrize("name", FORMATS)
def test_old_redis_parts_are_served_and_new_ones_are_the_same_bytes(
    name, shared_redis_url, redis_prefix
):
    client = redis.Redis.from_url(shared_redis_url)
    tier = RedisTier(shared_redis_url, prefix=redis_prefix, ttl_s=60)
    try:
        old, new = make_key(FINGERPRINT, f"old {name}"), make_key(FINGERPRINT, f"new {name}")
        client.hset(tier.redis_key(old), mapping=stored_parts(name))
        store = TieredStore(FINGERPRINT, [tier])
        assert_decodes_as_stored(store.get(old), name)
        TieredStore(FINGERPRINT, [tier], storage_format=FORMATS[name]).put(new, fixture_doc(name))
        written = {f.decode(): v for f, v in client.hgetall(tier.redis_key(new)).items()}
        old_parts = stored_parts(name)
        assert written.keys() == old_parts.keys()
        assert all(same_blob(written[field], old_parts[field]) for field in written)
    finally:
        tier.close()
        client.close()
