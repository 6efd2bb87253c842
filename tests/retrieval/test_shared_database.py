"""Two retrieval services on one PostgreSQL database, as two replicas would be: each one's
index follows the shared chunk table, and concurrent writers of one document id leave one
version whole."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from retrieval import RetrievalService
from retrieval.schema import SCHEMA_VERSION
from tests.retrieval.postgres import postgres_schema

# A generous bound for "within 2 s": the test fails only if the change never shows up.
VISIBILITY_DEADLINE_S = 30.0


@pytest.fixture
def database_url():
    with postgres_schema() as url:
        yield url


@pytest.fixture
def replicas(tmp_path: Path, count_tokens, embedder, database_url):
    """Factory of services on separate data dirs sharing `database_url`."""
    opened: list[RetrievalService] = []

    def open_(name: str) -> RetrievalService:
        service = RetrievalService(tmp_path / name, count_tokens, embedder, chunk_tokens=64,
                                   database_url=database_url, follow_interval_s=0.1)
        opened.append(service)
        return service

    yield open_
    for service in opened:
        service.close()


def _wait_until(condition: Callable[[], bool]) -> float:
    """Seconds until `condition()` held; fails the test past the deadline."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > VISIBILITY_DEADLINE_S:
            pytest.fail("the change did not reach the other replica")
        time.sleep(0.02)
    return time.monotonic() - started


def _found(service: RetrievalService, document_id: str, query: str) -> bool:
    return any(h.document_id == document_id for h in service.search(query, top_k=3))


def test_the_schema_version_is_recorded(database_url, replicas):
    replicas("a")
    engine = sa.create_engine(database_url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.connect() as conn:
        version = conn.execute(sa.text("SELECT value FROM meta WHERE key = 'schema_version'"))
        assert version.scalar() == str(SCHEMA_VERSION)
    engine.dispose()


def test_adds_and_deletes_reach_the_other_replica(replicas):
    a, b = replicas("a"), replicas("b")
    query = "Which river flows through the capital of the glass-blowers?"
    a.add_document("Glass-blowers of Murano ship vases down the river Brenta.", "murano")
    added_s = _wait_until(lambda: _found(b, "murano", query))
    b.delete_document("murano")
    deleted_s = _wait_until(lambda: not _found(a, "murano", query) and not a.index_ids().size)
    print(f"replica visibility: add {added_s:.3f} s, delete {deleted_s:.3f} s")
    assert list(a.index_ids()) == list(b.index_ids()) == list(a.stored_chunk_ids())


def test_concurrent_writers_of_one_id_leave_one_version_whole(replicas):
    a, b = replicas("a"), replicas("b")
    texts = {
        a: " ".join(f"Alpha fact {n}: the alpine lake holds {n} trout." for n in range(40)),
        b: " ".join(f"Beta fact {n}: the bay harbour moors {n} boats." for n in range(40)),
    }
    barrier = threading.Barrier(2)

    def write(service: RetrievalService) -> None:
        for _ in range(3):
            barrier.wait()
            service.add_document(texts[service], "contested")

    threads = [threading.Thread(target=write, args=(s,)) for s in (a, b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    chunks = a.chunks_of("contested")
    document = a.get_document("contested")
    assert document is not None and document.text in texts.values()
    # Every chunk comes from the winning text, each position once.
    assert all(chunk.text in document.text for chunk in chunks)
    assert [c.position for c in chunks] == list(range(len(chunks)))
    for service in (a, b):
        service.sync()
        assert np.array_equal(service.index_ids(), service.stored_chunk_ids())


def test_a_replica_behind_the_pruned_change_log_rebuilds_its_index(tmp_path, count_tokens, embedder,
                                                                     database_url, replicas):
    writer = replicas("writer")
    # A replica that applies changes only when asked, so the log can be pruned past it.
    behind = RetrievalService(tmp_path / "behind", count_tokens, embedder, chunk_tokens=64,
                              database_url=database_url, follow_interval_s=3600, change_log_keep=1)
    try:
        for n in range(4):
            writer.add_document(f"Harbour note {n}: the ferry leaves pier {n} at dawn.", f"note-{n}")
        writer.delete_document("note-0")
        assert behind.prune_change_log() > 0
        assert behind.prune_change_log() == 0  # nothing older than the last version is left
        engine = sa.create_engine(database_url.replace("postgresql://", "postgresql+psycopg://"))
        with engine.connect() as conn:
            versions = conn.execute(sa.text("SELECT DISTINCT version FROM changes")).scalars().all()
        engine.dispose()
        assert len(versions) <= 1
        behind.sync()
        assert np.array_equal(behind.index_ids(), behind.stored_chunk_ids())
        assert behind.index_ids().size == writer.stored_chunk_ids().size > 0
    finally:
        behind.close()
