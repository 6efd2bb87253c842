"""Each tier on its own: the `Tier` contract, Redis layout and limits, disk atomicity."""

from __future__ import annotations

import errno
import os
import time

import pytest
import redis
import torch

from kvstore import (
    CorruptEntry,
    DiskTier,
    FingerprintMismatch,
    MemoryTier,
    RedisTier,
    StoreWriteError,
    Tier,
    TierFull,
    make_key,
)
from kvstore.codec import encode
from kvstore.disk_layout import to_blob
from kvstore.stored_format import StorageFormat
from tests.kvstore.kvstore_testing import FINGERPRINT, make_doc, start_private_redis


def stored_doc(seed: int, length: int = 24, **kwargs):
    return encode(make_doc(seed, length, **kwargs))


@pytest.fixture(params=["memory", "redis", "disk"])
def tier(request, tmp_path) -> Tier:
    if request.param == "memory":
        return MemoryTier(10 * 2**20)
    if request.param == "redis":
        prefix = request.getfixturevalue("redis_prefix")
        return RedisTier(request.getfixturevalue("shared_redis_url"), prefix=prefix, ttl_s=60)
    return DiskTier(tmp_path)


def test_tier_contract(tier):
    assert isinstance(tier, Tier)
    key = make_key(FINGERPRINT, "chunk one")
    stored = stored_doc(1)
    assert tier.get(key) is None and not tier.contains(key)
    assert tier.read_header(key) is None and tier.read_layer(key, 0) is None
    tier.put(key, stored)
    assert tier.contains(key)
    got = tier.get(key)
    assert got.header == stored.header and torch.equal(got.token_ids, stored.token_ids)
    header, token_ids = tier.read_header(key)
    assert header == stored.header and torch.equal(token_ids, stored.token_ids)
    for layer in range(stored.header.n_layers):
        header, tensors = tier.read_layer(key, layer)
        assert tensors.keys() == stored.layer(layer).keys()
        for name, tensor in tensors.items():
            assert torch.equal(tensor, stored.layer(layer)[name]), (layer, name)
    with pytest.raises(IndexError):
        tier.read_layer(key, stored.header.n_layers)
    assert tier.delete(key) and not tier.delete(key)
    assert tier.get(key) is None


def test_tier_refuses_another_models_copy_under_a_key(tier):
    key = make_key(FINGERPRINT, "chunk")
    tier.put(key, stored_doc(2, fingerprint="another-model"))
    for read in (
        lambda: tier.get(key),
        lambda: tier.read_header(key),
        lambda: tier.read_layer(key, 0),
    ):
        with pytest.raises(FingerprintMismatch):
            read()


def test_memory_tier_is_bounded_in_bytes_and_evicts_least_recently_used():
    size = stored_doc(0).nbytes
    tier = MemoryTier(3 * size)
    keys = [make_key(FINGERPRINT, f"chunk {i}") for i in range(4)]
    for key in keys[:3]:
        tier.put(key, stored_doc(0))
    tier.get(keys[0])  # now keys[1] is the least recently used
    tier.put(keys[3], stored_doc(0))
    assert [tier.contains(k) for k in keys] == [True, False, True, True]
    assert tier.size_bytes == 3 * size
    tier.put(make_key(FINGERPRINT, "huge"), stored_doc(0, length=1000))
    assert tier.size_bytes == 3 * size and len(tier) == 3


def test_redis_layout_is_one_hash_with_a_ttl(shared_redis_url, redis_prefix):
    tier = RedisTier(shared_redis_url, prefix=redis_prefix, ttl_s=120)
    key = make_key(FINGERPRINT, "chunk")
    tier.put(key, stored_doc(3))
    client = redis.Redis.from_url(shared_redis_url)
    name = f"{redis_prefix}{key}"
    assert client.type(name) == b"hash"
    assert set(client.hkeys(name)) == {b"header"} | {f"layer.{i}".encode() for i in range(4)}
    assert 0 < client.ttl(name) <= 120
    client.close()


def test_redis_layer_with_a_bad_field_is_corrupt(shared_redis_url, redis_prefix):
    tier = RedisTier(shared_redis_url, prefix=redis_prefix, ttl_s=60)
    key = make_key(FINGERPRINT, "chunk")
    tier.put(key, stored_doc(4))
    client = redis.Redis.from_url(shared_redis_url)
    client.hset(f"{redis_prefix}{key}", "layer.1", client.hget(f"{redis_prefix}{key}", "layer.2"))
    client.close()
    tier.read_layer(key, 0)
    with pytest.raises(CorruptEntry):
        tier.read_layer(key, 1)
    with pytest.raises(CorruptEntry):
        tier.get(key)


def test_redis_at_maxmemory_refuses_with_tier_full():
    server = start_private_redis("--maxmemory", "2mb", "--maxmemory-policy", "noeviction")
    try:
        tier = RedisTier(server.url, ttl_s=60)
        with pytest.raises(TierFull):
            for i in range(20):
                tier.put(make_key(FINGERPRINT, f"chunk {i}"), stored_doc(i, length=2000))
    finally:
        server.stop()


def test_disk_layout(tmp_path):
    tier = DiskTier(tmp_path)
    key = make_key(FINGERPRINT, "chunk")
    tier.put(key, stored_doc(5))
    h = key.content_hash
    assert tier.path(key) == tmp_path / "kv" / h[:2] / h[2:4] / f"{key}.safetensors"
    assert tier.path(key).is_file()


def test_disk_full_raises_a_typed_error_and_leaves_nothing_behind(tmp_path, monkeypatch):
    tier = DiskTier(tmp_path)
    key = make_key(FINGERPRINT, "chunk")
    old = stored_doc(6)
    tier.put(key, old)
    real_write = os.write

    def write_half_then_fail(fd, data):
        if len(data) > 1:  # really write part of the blob, as a filling disk would
            real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", write_half_then_fail)
    with pytest.raises(StoreWriteError, match="No space left on device.*free disk space"):
        tier.put(key, stored_doc(7, length=500))
    with pytest.raises(StoreWriteError):
        tier.put(make_key(FINGERPRINT, "new chunk"), stored_doc(8))
    monkeypatch.undo()

    files = sorted(p.name for p in (tmp_path / "kv").rglob("*") if p.is_file())
    assert files == [f"{key}.safetensors"]  # no temp file, no new file
    assert tier.get(key).header == old.header  # the previous version is intact


def test_disk_truncated_file_is_corrupt(tmp_path):
    tier = DiskTier(tmp_path)
    key = make_key(FINGERPRINT, "chunk")
    blob = to_blob(stored_doc(9))
    tier.path(key).parent.mkdir(parents=True)
    tier.path(key).write_bytes(blob[:-10])
    for read in (
        lambda: tier.get(key),
        lambda: tier.read_header(key),
        lambda: tier.read_layer(key, 0),
    ):
        with pytest.raises(CorruptEntry):
            read()


@pytest.mark.parametrize("checksum", ["xxh3", "crc32", "sha256"])
def test_disk_copy_is_verified_with_the_algorithm_it_names(tmp_path, checksum):
    tier = DiskTier(tmp_path)
    key = make_key(FINGERPRINT, "chunk")
    stored = encode(make_doc(14), StorageFormat(checksum=checksum))
    tier.put(key, stored)
    got = tier.get(key)
    assert got.header.checksum_algorithm == checksum
    reader = tier.open_reader(key)
    for layer in range(stored.header.n_layers):
        _, tensors = reader.read_layer(layer)
        for name, tensor in stored.layer(layer).items():
            assert torch.equal(tensors[name], tensor) and torch.equal(
                got.layer(layer)[name], tensor
            )
    reader.close()
    # One flipped byte in the last layer's last tensor: whole reads and that layer's read fail.
    path = tier.path(key)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    last = stored.header.n_layers - 1
    with pytest.raises(CorruptEntry, match="checksum"):
        tier.get(key)
    with pytest.raises(CorruptEntry, match="checksum"):
        tier.read_layer(key, last)
    reader = tier.open_reader(key)
    assert torch.equal(reader.read_layer(0)[1]["k"], stored.layer(0)["k"])
    reader.close()


def test_memory_tier_never_shares_an_entry_with_get_or_put_callers():
    tier = MemoryTier(10 * 2**20)
    key = make_key(FINGERPRINT, "chunk")
    stored = stored_doc(10)
    keys_before = stored.tensors["k"].clone()
    tier.put(key, stored)
    stored.tensors["k"].zero_()  # the caller reusing its tensors after put
    got = tier.get(key)
    assert torch.equal(got.tensors["k"], keys_before)
    got.tensors["k"].zero_()  # a caller modifying what get returned
    assert torch.equal(tier.get(key).tensors["k"], keys_before)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_disk_reader_opens_its_file_once_per_pass_and_closes_it(tmp_path, monkeypatch):
    tier = DiskTier(tmp_path)
    key = make_key(FINGERPRINT, "chunk")
    stored = stored_doc(11)
    tier.put(key, stored)
    opens: list[str] = []
    real_open = os.open

    def counting_open(path, *args, **kwargs):
        opens.append(str(path))
        return real_open(path, *args, **kwargs)

    fds = _open_fds()
    monkeypatch.setattr(os, "open", counting_open)
    reader = tier.open_reader(key)
    for _ in range(2):  # the engine's two passes
        for layer in range(stored.header.n_layers):
            _, tensors = reader.read_layer(layer)
            assert torch.equal(tensors["v"], stored.layer(layer)["v"])
        reader.close()
        assert _open_fds() == fds
    assert opens == [str(tier.path(key))] * 2


def test_disk_reader_reads_one_version_per_pass_while_the_file_is_replaced(tmp_path):
    tier = DiskTier(tmp_path)
    key = make_key(FINGERPRINT, "chunk")
    old, new = stored_doc(12), stored_doc(13)
    tier.put(key, old)
    reader = tier.open_reader(key)
    reader.read_layer(0)
    tier.put(key, new)  # a rename over the open file
    _, tensors = reader.read_layer(1)
    assert torch.equal(tensors["k"], old.layer(1)["k"])
    tier.delete(key)  # the open file outlives its name too
    _, tensors = reader.read_layer(2)
    assert torch.equal(tensors["k"], old.layer(2)["k"])
    reader.close()
    assert reader.read_layer(0) is None  # the next pass finds the copy gone...
    tier.put(key, new)
    header, tensors = reader.read_layer(0)  # ...or the copy there is now
    assert header == new.header and torch.equal(tensors["k"], new.layer(0)["k"])
    reader.close()


def test_disk_tier_lists_its_copies_by_model_and_sweeps_interrupted_writes(tmp_path):
    disk = DiskTier(tmp_path)
    ours = [make_key(FINGERPRINT, f"chunk {i}") for i in range(3)]
    theirs = make_key("another-model", "chunk 0")
    for key in ours:
        disk.put(key, stored_doc(1))
    disk.put(theirs, stored_doc(2, fingerprint="another-model"))
    foreign = disk.path(ours[0]).parent / "notes.safetensors"
    foreign.write_bytes(b"not a copy of ours")
    assert disk.stored_keys(ours[0].fingerprint_hash) == set(ours)
    assert disk.stored_keys(theirs.fingerprint_hash) == {theirs}

    folder = disk.path(ours[1]).parent
    old, young = folder / ".old.abcd.tmp", folder / ".young.efgh.tmp"
    old.write_bytes(b"half a write")
    young.write_bytes(b"a write in progress")
    os.utime(old, (time.time() - 120,) * 2)
    assert disk.remove_interrupted_writes(older_than_s=60) == 1
    assert not old.exists() and young.exists() and foreign.exists()
    assert all(disk.contains(key) for key in [*ours, theirs])
