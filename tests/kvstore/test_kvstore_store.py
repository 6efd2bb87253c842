"""`TieredStore`: fall-through, back-fill, outages, repair, fingerprints, concurrency, layer-wise sources."""

from __future__ import annotations

import logging
import os
import threading

import pytest
import redis
import torch

from kvstore import (
    DiskTier,
    DocumentNotFound,
    EncoderMismatch,
    MemoryTier,
    RedisTier,
    StorageFormat,
    TieredStore,
    TierUnavailable,
    open_store,
)
from kvstore.codec import encode
from kvstore.disk_layout import to_blob
from samkv.document import DocumentSource
from tests.kvstore.kvstore_testing import (
    FINGERPRINT,
    FakeEncoder,
    as_stored,
    assert_same_doc,
    make_doc,
)


def build_store(tmp_path, redis_url, prefix, encoder=None, **kwargs) -> TieredStore:
    tiers = [
        MemoryTier(64 * 2**20),
        RedisTier(redis_url, prefix=prefix, ttl_s=60),
        DiskTier(tmp_path),
    ]
    return TieredStore(FINGERPRINT, tiers, encode=encoder, **kwargs)


@pytest.fixture
def store(tmp_path, shared_redis_url, redis_prefix, encoder) -> TieredStore:
    return build_store(tmp_path, shared_redis_url, redis_prefix, encoder)


def tiers_holding(store: TieredStore, item) -> list[str]:
    """The tiers holding a copy of `item`; a tier that is down holds nothing we can see."""
    key = item if not isinstance(item, str) else store.key(item)
    names = []
    for tier in store.tiers:
        try:
            if tier.contains(key):
                names.append(tier.name)
        except TierUnavailable:
            continue
    return names


def test_put_writes_every_tier_and_get_round_trips(store, encoder):
    doc = encoder("chunk one")
    key = store.put("chunk one", doc)
    assert tiers_holding(store, key) == ["memory", "redis", "disk"]
    assert_same_doc(store.get(key), as_stored(doc))
    assert store.stats()["hits"] == {"memory": 1}


def test_reads_fall_through_and_back_fill(store, encoder):
    text = "chunk two"
    doc = encoder(text)
    store.put(text, doc)
    memory, redis_tier, _ = store.tiers
    memory.clear()
    redis_tier.delete(store.key(text))

    assert_same_doc(store.get(text), as_stored(doc))
    stats = store.stats()
    assert stats["misses"] == {"memory": 1, "redis": 1} and stats["hits"] == {"disk": 1}
    assert tiers_holding(store, text) == ["memory", "redis", "disk"]

    memory.clear()
    assert_same_doc(store.get(text), as_stored(doc))
    assert store.stats()["hits"] == {"disk": 1, "redis": 1}
    assert_same_doc(store.get(text), as_stored(doc))
    assert store.stats()["hits"] == {"disk": 1, "redis": 1, "memory": 1}
    assert encoder.calls == [text]  # only the test's own call: nothing was re-encoded


def test_missing_document_is_encoded_from_its_text_or_reported(store, encoder):
    with pytest.raises(DocumentNotFound):
        store.get(store.key("never stored"))
    doc = store.get("never stored")
    assert_same_doc(doc, as_stored(encoder("never stored")))
    assert tiers_holding(store, "never stored") == ["memory", "redis", "disk"]
    assert store.stats()["encode"]["documents"] == 1


def test_delete_removes_every_tier(store, encoder):
    store.put("chunk", encoder("chunk"))
    store.delete("chunk")
    assert tiers_holding(store, "chunk") == [] and not store.contains("chunk")


@pytest.mark.parametrize("fmt", [StorageFormat("bfloat16"), StorageFormat("float16", "int8")])
def test_every_tier_serves_the_same_tensors(tmp_path, shared_redis_url, redis_prefix, encoder, fmt):
    store = build_store(tmp_path, shared_redis_url, redis_prefix, encoder, storage_format=fmt)
    store.put("chunk", encoder("chunk"))
    from_memory = store.get("chunk")
    store.tiers[0].clear()
    from_redis = store.get("chunk")
    store.tiers[0].clear()
    store.tiers[1].delete(store.key("chunk"))
    from_disk = store.get("chunk")
    assert from_memory.dtype == fmt.torch_dtype
    assert_same_doc(from_redis, from_memory)
    assert_same_doc(from_disk, from_memory)


def test_source_reads_exact_layer_slices_from_each_tier(store, encoder):
    texts = [f"document number {i}" for i in range(3)]
    docs = [encoder(t) for t in texts]
    for text, doc in zip(texts, docs):
        store.put(text, doc)
    store.tiers[0].delete(store.key(texts[1]))  # served by Redis
    store.tiers[0].delete(store.key(texts[2]))
    store.tiers[1].delete(store.key(texts[2]))  # served by disk

    source = store.source(texts, backfill=False)
    assert isinstance(source, DocumentSource)
    assert source.tiers == ["memory", "redis", "disk"]
    for meta, doc in zip(source.documents, docs):
        assert torch.equal(meta.token_ids, doc.token_ids)
        assert (meta.fingerprint, meta.prefix_len) == (FINGERPRINT, doc.prefix_len)
    for _ in range(2):  # a source must serve a layer again: a caller may read layers in any order and repeat them
        for layer in range(docs[0].num_layers):
            for got, doc in zip(source.read_layer(layer), docs):
                want = as_stored(doc).layer(layer)
                assert torch.equal(got.keys, want.keys)
                assert torch.equal(got.values, want.values)
                assert torch.equal(got.summary_queries, want.summary_queries)
    assert tiers_holding(store, texts[2]) == ["disk"]  # no back-fill asked for


def test_source_back_fills_after_a_full_pass(store, encoder):
    store.put("chunk", encoder("chunk"))
    store.tiers[0].clear()
    store.tiers[1].delete(store.key("chunk"))
    source = store.source(["chunk"])
    assert source.tiers == ["disk"]
    for layer in range(source.num_layers - 1):
        source.read_layer(layer)
    assert tiers_holding(store, "chunk") == ["disk"]
    source.read_layer(source.num_layers - 1)
    assert tiers_holding(store, "chunk") == ["memory", "redis", "disk"]
    assert_same_doc(store.get("chunk"), as_stored(encoder("chunk")))


def test_source_encodes_missing_documents_before_any_layer_is_read(store, encoder):
    store.put("stored", encoder("stored"))
    encoder.calls.clear()
    source = store.source(["stored", "not yet stored"])
    assert encoder.calls == ["not yet stored"]
    assert len(source.read_layer(0)) == 2
    with pytest.raises(DocumentNotFound):
        store.source([store.key("unknown and no text")])


def test_redis_stopped_mid_test_is_served_from_disk(tmp_path, private_redis, encoder, caplog):
    store = build_store(tmp_path, private_redis.url, "t:", encoder)
    texts = ["alpha", "beta"]
    for text in texts:
        store.put(text, encoder(text))
    store.tiers[0].clear()
    source = store.source(texts)
    assert source.tiers == ["redis", "redis"]
    first = source.read_layer(0)

    private_redis.stop()
    calls = len(encoder.calls)
    with caplog.at_level(logging.WARNING, logger="kvstore.store"):
        for layer in range(source.num_layers):
            got = source.read_layer(layer)
            want = [as_stored(encoder(t)).layer(layer) for t in texts]
            assert all(torch.equal(g.keys, w.keys) for g, w in zip(got, want))
        assert source.tiers == ["disk", "disk"]
        store.tiers[0].clear()
        assert_same_doc(store.get("alpha"), as_stored(encoder("alpha")))
        store.put("gamma", encoder("gamma"))  # writes still succeed: disk is durable
        assert tiers_holding(store, "gamma") == ["memory", "disk"]
    assert len(encoder.calls) == calls + 2 * source.num_layers + 2  # only the test's own calls
    assert store.stats()["unavailable"]["redis"] >= 1
    warnings = [r for r in caplog.records if "redis unavailable" in r.getMessage()]
    assert len(warnings) == 1  # rate-limited
    assert torch.equal(first[0].keys, as_stored(encoder("alpha")).layer(0).keys)


def test_corrupt_copies_on_disk_and_in_redis_are_discarded_and_repaired(
    store, encoder, shared_redis_url
):
    text = "chunk to corrupt"
    doc = encoder(text)
    key = store.put(text, doc)
    memory, redis_tier, disk = store.tiers
    memory.clear()
    client = redis.Redis.from_url(shared_redis_url)
    name = redis_tier.redis_key(key)
    layer = bytearray(client.hget(name, "layer.1"))
    layer[-3] ^= 0x55
    client.hset(name, "layer.1", bytes(layer))
    blob = bytearray(disk.path(key).read_bytes())
    blob[-100] ^= 0x55
    disk.path(key).write_bytes(bytes(blob))
    encoder.calls.clear()

    assert_same_doc(store.get(text), as_stored(doc))
    assert encoder.calls == [text]  # re-encoded once
    assert store.stats()["discarded"] == {"redis.corrupt": 1, "disk.corrupt": 1}
    assert redis_tier.get(key) is not None and disk.get(key) is not None  # rewritten, valid
    client.close()


def test_corrupt_redis_copy_is_replaced_from_disk_without_re_encoding(
    store, encoder, shared_redis_url
):
    key = store.put("chunk", encoder("chunk"))
    store.tiers[0].clear()
    client = redis.Redis.from_url(shared_redis_url)
    client.hset(store.tiers[1].redis_key(key), "header", b"garbage")
    encoder.calls.clear()
    assert_same_doc(store.get("chunk"), as_stored(encoder("chunk")))
    assert encoder.calls == ["chunk"]  # only the test's comparison
    assert store.tiers[1].get(key) is not None
    client.close()


def test_corruption_found_mid_request_falls_through(store, encoder, shared_redis_url):
    key = store.put("chunk", encoder("chunk"))
    store.tiers[0].clear()
    source = store.source(["chunk"])
    assert source.tiers == ["redis"]
    client = redis.Redis.from_url(shared_redis_url)
    client.hset(store.tiers[1].redis_key(key), "layer.2", b"garbage")
    client.close()
    for layer in range(source.num_layers):
        got = source.read_layer(layer)[0]
        assert torch.equal(got.values, as_stored(encoder("chunk")).layer(layer).values)
    assert source.tiers == ["disk"]
    assert store.stats()["discarded"] == {"redis.corrupt": 1}


def test_another_models_cache_is_never_served(store, encoder):
    text = "shared chunk"
    key = store.key(text)
    foreign = encode(FakeEncoder("another-model")(text))
    store.tiers[1].put(key, foreign)
    store.tiers[2].write_bytes(key, to_blob(foreign))
    with pytest.raises(DocumentNotFound):
        store.get(key)
    assert store.stats()["discarded"] == {"redis.fingerprint": 1, "disk.fingerprint": 1}
    doc = store.get(text)
    assert doc.fingerprint == FINGERPRINT
    assert_same_doc(doc, as_stored(encoder(text)))
    with pytest.raises(EncoderMismatch):
        store.put(text, make_doc(1, fingerprint="another-model"))
    other = TieredStore("another-model", [MemoryTier(2**20)])
    with pytest.raises(EncoderMismatch):
        other.get(key)


def test_concurrent_readers_and_writers_on_one_key(store, encoder):
    text = "contended chunk"
    versions = [encoder(text), make_doc(99, encoder(text).length)]
    expected = [as_stored(v) for v in versions]
    store.put(text, versions[0])
    errors: list[BaseException] = []
    stop = threading.Event()

    def writer(i: int) -> None:
        n = 0
        while not stop.is_set():
            store.put(text, versions[(i + n) % 2])
            n += 1
            if n % 5 == 0:
                store.delete(text)

    def reader() -> None:
        for n in range(40):
            if n % 2:
                got = store.get(text)
                if not any(
                    torch.equal(got.keys, e.keys) and torch.equal(got.values, e.values)
                    for e in expected
                ):
                    raise AssertionError("a read mixed two versions")
            else:
                source = store.source([text])
                for layer in range(source.num_layers):
                    got = source.read_layer(layer)[0]
                    if not any(torch.equal(got.keys, e.layer(layer).keys) for e in expected):
                        raise AssertionError("a layer read matched no version")

    def run(fn, *args):
        try:
            fn(*args)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    writers = [threading.Thread(target=run, args=(writer, i)) for i in range(2)]
    readers = [threading.Thread(target=run, args=(reader,)) for _ in range(4)]
    for t in writers + readers:
        t.start()
    for t in readers:
        t.join(timeout=120)
    stop.set()
    for t in writers:
        t.join(timeout=60)
    assert not errors, errors
    assert "discarded" not in store.stats()  # nothing was ever seen half-written
    got = store.get(text)
    assert any(torch.equal(got.keys, e.keys) for e in expected)


def test_open_store_with_and_without_redis(tmp_path, shared_redis_url, encoder):
    plain = open_store(tmp_path / "a", FINGERPRINT, encoder)
    assert [t.name for t in plain.tiers] == ["memory", "disk"]
    prefix = "kvstore-test:open-store:"
    with_redis = open_store(
        tmp_path / "b", FINGERPRINT, encoder, redis_url=shared_redis_url, redis_prefix=prefix
    )
    try:
        assert [t.name for t in with_redis.tiers] == ["memory", "redis", "disk"]
        with_redis.put("chunk", encoder("chunk"))
        assert (tmp_path / "b" / "kv").is_dir()
    finally:
        with_redis.delete("chunk")
        with_redis.close()


def test_open_store_takes_int8_as_a_storage_dtype(tmp_path, encoder):
    store = open_store(tmp_path, FINGERPRINT, encoder, storage_dtype="int8")
    assert store.storage_format == StorageFormat("float16", "int8")
    key = store.put("chunk", encoder("chunk"))
    header, _ = store.durable_tier.read_header(key)
    assert (header.storage_dtype, header.quantization) == ("float16", "int8")
    with pytest.raises(ValueError, match="storage dtype"):
        open_store(tmp_path, FINGERPRINT, encoder, storage_dtype="int4")


def test_redis_layers_of_all_documents_come_in_one_round_trip(store, encoder, monkeypatch):
    texts = [f"document {i}" for i in range(3)]
    for text in texts:
        store.put(text, encoder(text))
    store.tiers[0].clear()
    source = store.source(texts)
    assert source.tiers == ["redis"] * 3
    single_reads: list[int] = []
    real = RedisTier.read_parts

    def counting(self, key, layer):
        single_reads.append(layer)
        return real(self, key, layer)

    monkeypatch.setattr(RedisTier, "read_parts", counting)
    for _ in range(2):
        for layer in range(source.num_layers):
            got = source.read_layer(layer)
            want = [as_stored(encoder(t)).layer(layer) for t in texts]
            assert all(torch.equal(g.keys, w.keys) for g, w in zip(got, want))
    assert single_reads == []  # every layer came from the per-layer pipeline
    assert store.stats()["loads"]["redis.prefetch"] == 2 * source.num_layers


def _disk_store_of_three(tmp_path, encoder) -> tuple[TieredStore, list[str]]:
    """A disk-only store holding three documents, and their texts."""
    store = TieredStore(FINGERPRINT, [DiskTier(tmp_path)], encode=encoder)
    texts = [f"document {i}" for i in range(3)]
    for text in texts:
        store.put(text, encoder(text))
    return store, texts


def test_a_source_over_disk_closes_its_files_after_each_pass(tmp_path, encoder):
    store, texts = _disk_store_of_three(tmp_path, encoder)
    fds = len(os.listdir("/proc/self/fd"))
    source = store.source(texts)
    assert len(os.listdir("/proc/self/fd")) == fds + 3  # opened once, for the first pass
    for layer in range(source.num_layers):
        source.read_layer(layer)
    assert len(os.listdir("/proc/self/fd")) == fds


def test_a_pass_over_some_documents_reads_only_them_and_closes_every_file(tmp_path, encoder):
    store, texts = _disk_store_of_three(tmp_path, encoder)
    fds = len(os.listdir("/proc/self/fd"))
    source = store.source(texts)
    for layer in range(source.num_layers - 1):  # a probe's pass over every document
        source.read_layer(layer)
    loaded = store.stats()["loads"]["disk.layer"]
    for layer in range(source.num_layers):  # the assembly's pass over documents 0 and 2
        got = source.read_layer(layer, [0, 2])
        want = [as_stored(encoder(texts[i])).layer(layer) for i in (0, 2)]
        assert all(torch.equal(g.keys, w.keys) for g, w in zip(got, want, strict=True))
    assert store.stats()["loads"]["disk.layer"] == loaded + 2 * source.num_layers
    assert len(os.listdir("/proc/self/fd")) == fds  # document 1's file, open since the probe, too


def test_drop_page_cache_advises_every_disk_file_and_reads_still_work(tmp_path, encoder):
    store = TieredStore(FINGERPRINT, [MemoryTier(64 * 2**20), DiskTier(tmp_path)], encode=encoder)
    texts = [f"document {i}" for i in range(3)]
    for text in texts:
        store.put(text, encoder(text))
    store.put(texts[0], encoder(texts[0]))  # a rewrite replaces the file: still three
    assert store.drop_page_cache() == 3
    store.tiers[0].clear()
    want = [as_stored(encoder(t)) for t in texts]
    encoded = len(encoder.calls)
    source = store.source(texts, backfill=False)
    assert source.tiers == ["disk"] * 3
    for layer in range(source.num_layers):
        got = source.read_layer(layer)
        for g, w in zip(got, want):
            assert torch.equal(g.keys, w.layer(layer).keys)
            assert torch.equal(g.values, w.layer(layer).values)
    assert len(encoder.calls) == encoded  # served from the files, nothing re-encoded


def test_drop_page_cache_without_a_disk_tier_does_nothing(encoder):
    store = TieredStore(FINGERPRINT, [MemoryTier(64 * 2**20)], encode=encoder)
    store.put("chunk", encoder("chunk"))
    assert store.drop_page_cache() == 0
    assert_same_doc(store.get("chunk"), as_stored(encoder("chunk")))


def test_the_store_names_its_models_fingerprint_as_its_keys_carry_it(store):
    assert store.fingerprint == FINGERPRINT
    assert store.fingerprint_hash == store.key("any chunk").fingerprint_hash
    assert store.fingerprint_hash != TieredStore("another-model", store.tiers).fingerprint_hash
