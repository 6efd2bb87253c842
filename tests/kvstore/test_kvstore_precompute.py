"""`Precomputer`: batching, progress, failures, durability before done, bounded queue."""

from __future__ import annotations

import errno
import os
import threading

import pytest

from kvstore import DiskTier, MemoryTier, Precomputer, QueueFull, RedisTier, TieredStore
from tests.kvstore.kvstore_testing import FINGERPRINT, FakeEncoder, assert_same_doc


@pytest.fixture
def store(tmp_path, encoder) -> TieredStore:
    return TieredStore(FINGERPRINT, [MemoryTier(2**24), DiskTier(tmp_path)], encode=encoder)


class BatchEncoder:
    def __init__(self, encoder: FakeEncoder) -> None:
        self.encoder = encoder
        self.batches: list[list[str]] = []

    def __call__(self, texts: list[str]):
        self.batches.append(list(texts))
        if any(t in self.encoder.fail_on for t in texts):
            raise RuntimeError("batch failed")
        return [self.encoder(t) for t in texts]


def test_batches_progress_and_durability(store, encoder):
    batch = BatchEncoder(encoder)
    texts = [f"chunk {i}" for i in range(10)] + ["chunk 3"]  # one duplicate
    seen = []

    def on_progress(progress):
        # Whatever is reported done is already on disk.
        durable = sum(store.has_durable_copy(t) for t in set(texts))
        seen.append((progress, durable))

    pre = Precomputer(store, encode_batch=batch, batch_size=4, on_progress=on_progress)
    job = pre.submit(texts, job_id="job-1")
    progress = job.wait(timeout=30)
    pre.close()

    assert (progress.job_id, progress.status, progress.total, progress.done, progress.failed) == (
        "job-1",
        "done",
        11,
        11,
        0,
    )
    assert [len(b) for b in batch.batches] == [4, 4, 2]  # the duplicate is encoded once
    dones = [p.done for p, _ in seen]
    assert dones == sorted(dones) and dones[-1] == 11 and seen[-1][0].finished
    for p, durable in seen:
        assert p.done <= durable + (texts.count("chunk 3") - 1)
    assert all(store.has_durable_copy(t) for t in texts)
    assert (
        store.stats()["encode"]["documents"] == 10 and store.stats()["encode"]["tokens_per_s"] > 0
    )


def test_already_stored_chunks_are_not_encoded_again(store, encoder):
    pre = Precomputer(store)
    pre.submit(["a", "b"]).wait(timeout=30)
    encoder.calls.clear()
    progress = pre.submit(["a", "b", "c"]).wait(timeout=30)
    pre.close()
    assert progress.status == "done" and progress.done == 3
    assert encoder.calls == ["c"]


def test_failures_are_reported_per_chunk(store, encoder):
    encoder.fail_on = {"bad chunk"}
    batch = BatchEncoder(encoder)
    pre = Precomputer(store, encode_batch=batch, batch_size=3)
    progress = pre.submit(["good 1", "bad chunk", "good 2", "good 3"]).wait(timeout=30)
    pre.close()
    assert (progress.status, progress.done, progress.failed) == ("failed", 3, 1)
    assert len(progress.errors) == 1 and "cannot encode 'bad chunk'" in progress.errors[0]
    assert store.has_durable_copy("good 1") and not store.has_durable_copy("bad chunk")


def test_disk_full_fails_the_job_with_the_reason(store, monkeypatch):
    def no_space(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", no_space)
    pre = Precomputer(store)
    progress = pre.submit(["x", "y"]).wait(timeout=30)
    pre.close()
    monkeypatch.undo()
    assert (progress.status, progress.failed) == ("failed", 2)
    assert all("No space left on device" in e for e in progress.errors)
    assert not any(p.is_file() for p in (store.durable_tier.root).rglob("*"))


def test_the_queue_is_bounded(store, encoder):
    release = threading.Event()
    started = threading.Event()

    def slow_batch(texts):
        started.set()
        release.wait(timeout=30)
        return [encoder(t) for t in texts]

    pre = Precomputer(store, encode_batch=slow_batch, max_queued_jobs=1)
    first = pre.submit(["one"])
    assert started.wait(timeout=10)  # the worker holds `first`; the queue is empty again
    second = pre.submit(["two"])
    assert second.progress().status == "queued"
    with pytest.raises(QueueFull):
        pre.submit(["three"])
    release.set()
    assert first.wait(timeout=30).status == "done" and second.wait(timeout=30).status == "done"
    pre.close()
    with pytest.raises(RuntimeError):
        pre.submit(["four"])


def test_a_replica_with_an_empty_disk_copies_what_the_shared_redis_holds(
    tmp_path, shared_redis_url, redis_prefix, encoder
):
    def replica(name: str) -> TieredStore:
        tiers = [MemoryTier(2**24), RedisTier(shared_redis_url, prefix=redis_prefix), DiskTier(tmp_path / name)]
        return TieredStore(FINGERPRINT, tiers, encode=encoder)

    first, second = replica("first"), replica("second")
    writer = Precomputer(first)
    writer.submit(["a", "b"]).wait(timeout=30)
    writer.close()
    first_copy = first.get("a")
    first.close()
    encoder.calls.clear()

    pre = Precomputer(second)
    progress = pre.submit(["a", "b", "c"]).wait(timeout=30)
    pre.close()
    assert (progress.status, progress.done) == ("done", 3)
    assert encoder.calls == ["c"]  # a and b came from Redis, c from the encoder
    assert all(second.has_durable_copy(text) for text in "abc")
    assert not second.copy_to_durable("never stored")
    # The copy on the second disk is the first replica's bytes, served with Redis gone.
    on_disk = TieredStore(FINGERPRINT, [DiskTier(tmp_path / "second")])
    assert_same_doc(on_disk.get("a"), first_copy)
    second.close()
