"""The start-up check of the KV files against the document store, on a real disk-tier store
with a fake encoder and a stand-in document store (no models)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from app.consistency import STALE_TEMP_FILE_S, check_consistency
from kvstore import Precomputer, open_store
from retrieval import content_hash
from tests.kvstore.kvstore_testing import FINGERPRINT, FakeEncoder

TEXTS = ["first chunk", "second chunk", "third chunk", "fourth chunk"]


@dataclass
class _Chunk:
    text: str

    @property
    def content_hash(self) -> str:
        return content_hash(self.text)


@dataclass
class _Document:
    id: str


class _Retrieval:
    """What `check_consistency` reads of the retrieval service: documents and their chunks."""

    def __init__(self, chunks: dict[str, list[str]]) -> None:
        self._chunks = chunks

    def list_documents(self) -> list[_Document]:
        return [_Document(document_id) for document_id in self._chunks]

    def chunks_of(self, document_id: str) -> list[_Chunk]:
        return [_Chunk(text) for text in self._chunks[document_id]]


def test_missing_caches_are_reencoded_and_orphans_deleted(tmp_path):
    encoder = FakeEncoder()
    store = open_store(tmp_path, FINGERPRINT, encoder)
    for text in TEXTS:
        store.put(text, encoder(text))
    other_model = open_store(tmp_path, "another-model", FakeEncoder("another-model"))
    other_model.put("kept for the other model", FakeEncoder("another-model")("kept for the other model"))
    disk = store.durable_tier
    # "second" lost its file, "third" was cut short; "fourth" belongs to a deleted document.
    disk.path(store.key("second chunk")).unlink()
    damaged = disk.path(store.key("third chunk"))
    damaged.write_bytes(damaged.read_bytes()[:100])
    stale = damaged.parent / ".third.abcd.tmp"
    stale.write_bytes(b"half a write")
    os.utime(stale, (time.time() - STALE_TEMP_FILE_S - 1,) * 2)
    fresh = damaged.parent / ".other.efgh.tmp"
    fresh.write_bytes(b"a write in progress")

    retrieval = _Retrieval({"a": ["first chunk", "second chunk"], "b": ["third chunk", "first chunk"]})
    precomputer = Precomputer(store)
    try:
        report, job = check_consistency(retrieval, store, precomputer)
        assert (report.chunks, report.missing_kv, report.orphan_kv, report.stale_temp_files) == (3, 2, 1, 1)
        assert job is not None and job.wait(60).status == "done"
    finally:
        precomputer.close()

    for text in ("first chunk", "second chunk", "third chunk"):
        assert store.has_durable_copy(text), text
    assert not disk.path(store.key("fourth chunk")).exists()
    assert other_model.has_durable_copy("kept for the other model")
    assert not stale.exists() and fresh.exists()
    idle = Precomputer(store)
    try:
        again, job = check_consistency(retrieval, store, idle)
    finally:
        idle.close()
    assert (again.missing_kv, again.orphan_kv, job) == (0, 0, None)
