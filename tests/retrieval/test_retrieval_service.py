"""The retrieval service: deletes, restarts, index recovery, filters, re-ingestion, threads."""

from __future__ import annotations

import logging
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from retrieval import (
    DocumentNotFound,
    InvalidDocument,
    InvalidQuery,
    RetrievalService,
    ServiceClosed,
    content_hash,
)
from retrieval.index_file import read_index_file, write_index_file
from retrieval.service import INDEX_FILE

ANIMALS = {
    "otters": "Sea otters hold hands while they sleep so they do not drift apart. "
    "They use rocks as tools to crack open shellfish.",
    "bees": "Honey bees communicate the direction of flowers with a waggle dance. "
    "A colony can hold tens of thousands of workers.",
    "owls": "Owls turn their heads up to two hundred and seventy degrees. "
    "Their feathers are shaped to make their flight almost silent.",
}
CITIES = {
    "lisbon": "Lisbon is built on seven hills above the Tagus river. Its yellow trams climb steep "
    "streets.",
    "kyoto": "Kyoto has more than a thousand Buddhist temples. It was the capital of Japan for "
    "over a thousand years.",
    "reykjavik": "Reykjavik heats most of its houses with geothermal water from volcanic ground.",
}


def ingest(service: RetrievalService) -> None:
    for name, text in ANIMALS.items():
        service.add_document(text, name, {"topic": "animals", "lang": "en"})
    for name, text in CITIES.items():
        service.add_document(text, name, {"topic": "cities", "lang": "en", "rank": 1})


def test_search_finds_the_right_document(open_service):
    service = open_service()
    ingest(service)
    hits = service.search("Which animal dances to show where flowers are?", top_k=3)
    assert hits[0].document_id == "bees"
    assert hits[0].content_hash == content_hash(hits[0].text)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_deleted_document_never_comes_back(open_service, tmp_path):
    service = open_service()
    ingest(service)
    service.save()
    index_before_delete = tmp_path / "index-before-delete"
    shutil.copy(tmp_path / "data" / INDEX_FILE, index_before_delete)
    deleted_ids = {c.id for c in service.chunks_of("owls")}

    assert service.delete_document("owls") is True
    assert service.delete_document("owls") is False
    query = "Which bird flies silently and turns its head?"

    def assert_gone(svc: RetrievalService) -> None:
        assert svc.get_document("owls") is None
        assert "owls" not in {d.id for d in svc.list_documents()}
        for filters in (None, {"topic": "animals"}):
            hits = svc.search(query, top_k=10, filters=filters)
            assert hits and not {h.chunk_id for h in hits} & deleted_ids
            assert all(h.document_id != "owls" for h in hits)
        # Deleted chunks also leave the index: every live chunk is still reachable.
        live = sum(d.chunk_count for d in svc.list_documents())
        assert len(svc.search(query, top_k=live)) == live

    assert_gone(service)
    service.close()
    assert_gone(open_service())

    # A crash after the delete left the index on disk from before it: still gone.
    shutil.copy(index_before_delete, tmp_path / "data" / INDEX_FILE)
    assert_gone(open_service())


def test_restart_returns_the_same_results(open_service):
    service = open_service()
    ingest(service)
    queries = ["temples in Japan", "tools for shellfish", "volcanic heating", "trams on hills"]
    before = [service.search(q, top_k=4) for q in queries]
    service.close()
    with pytest.raises(ServiceClosed):
        service.search("anything")
    after = [open_service().search(q, top_k=4) for q in queries]
    for hits_before, hits_after in zip(before, after):
        assert [h.chunk_id for h in hits_before] == [h.chunk_id for h in hits_after]
        assert [h.score for h in hits_before] == pytest.approx([h.score for h in hits_after])


@pytest.mark.parametrize("damage", ["truncate", "delete", "garbage"])
def test_damaged_index_is_rebuilt_from_the_store(open_service, tmp_path, caplog, damage):
    service = open_service()
    ingest(service)
    expected = [h.chunk_id for h in service.search("geothermal water", top_k=3)]
    service.close()
    index_path = tmp_path / "data" / INDEX_FILE
    if damage == "truncate":
        index_path.write_bytes(index_path.read_bytes()[: index_path.stat().st_size // 2])
    elif damage == "delete":
        index_path.unlink()
    else:
        index_path.write_bytes(b"not a faiss index")

    with caplog.at_level(logging.WARNING, logger="retrieval"):
        reopened = open_service()
    assert any("rebuilding it from the store" in r.getMessage() for r in caplog.records)
    assert [h.chunk_id for h in reopened.search("geothermal water", top_k=3)] == expected


def test_an_older_index_file_catches_up_through_the_change_log(open_service, tmp_path, caplog):
    service = open_service()
    service.add_document(ANIMALS["otters"], "otters")
    service.save()
    old_version = service.index_version
    stale = (tmp_path / "data" / INDEX_FILE).read_bytes()
    service.add_document(CITIES["kyoto"], "kyoto")
    service.close()
    (tmp_path / "data" / INDEX_FILE).write_bytes(stale)

    with caplog.at_level(logging.WARNING, logger="retrieval"):
        reopened = open_service()
    assert not any("rebuilding" in r.getMessage() for r in caplog.records)
    assert reopened.index_version > old_version
    assert reopened.search("Buddhist temples", top_k=1)[0].document_id == "kyoto"
    assert list(reopened.index_ids()) == list(reopened.stored_chunk_ids())


def test_an_index_file_older_than_the_pruned_log_is_rebuilt(open_service, tmp_path, caplog):
    service = open_service(change_log_keep=1)
    service.add_document(ANIMALS["otters"], "otters")
    service.save()
    stale = (tmp_path / "data" / INDEX_FILE).read_bytes()
    service.add_document(CITIES["kyoto"], "kyoto")
    service.delete_document("otters")
    assert service.prune_change_log() > 0  # on SQLite, the embedded default
    service.close()
    (tmp_path / "data" / INDEX_FILE).write_bytes(stale)

    with caplog.at_level(logging.INFO, logger="retrieval"):
        reopened = open_service()
    assert any("asks for a rebuild" in r.getMessage() for r in caplog.records)
    assert reopened.search("Buddhist temples", top_k=1)[0].document_id == "kyoto"
    assert list(reopened.index_ids()) == list(reopened.stored_chunk_ids())


def test_an_inconsistent_index_file_is_rebuilt(open_service, tmp_path, caplog):
    service = open_service()
    service.add_document(ANIMALS["otters"], "otters")
    service.save()
    stale = read_index_file(tmp_path / "data" / INDEX_FILE)
    service.add_document(CITIES["kyoto"], "kyoto")
    service.close()
    # An index that claims the latest version but lacks the latest chunks.
    write_index_file(tmp_path / "data" / INDEX_FILE, stale.data, service.index_version)

    with caplog.at_level(logging.WARNING, logger="retrieval"):
        reopened = open_service()
    assert any("stale" in r.getMessage() for r in caplog.records)
    assert reopened.search("Buddhist temples", top_k=1)[0].document_id == "kyoto"


def test_filters_keep_only_matching_documents(open_service):
    service = open_service()
    ingest(service)
    service.add_document("Owls are called hiboux in French.", "owls-fr", {"lang": "fr"})
    query = "owl heads and silent flight"

    assert {
        h.document_id for h in service.search(query, top_k=10, filters={"topic": "cities"})
    } == set(CITIES)
    french = service.search(query, top_k=5, filters={"lang": "fr"})
    assert [h.document_id for h in french] == ["owls-fr"]
    assert service.search(query, top_k=5, filters={"lang": "de"}) == []
    # True == 1 in Python; a boolean filter must not match the number.
    assert service.search(query, top_k=5, filters={"rank": True}) == []
    assert len(service.search(query, top_k=5, filters={"rank": 1})) == 3
    with pytest.raises(InvalidQuery):
        service.search(query, filters={"lang": ["en"]})
    with pytest.raises(InvalidQuery):
        service.search(query, top_k=0)


def test_selective_filter_falls_back_to_an_exact_search(open_service):
    service = open_service()
    for i in range(40):
        service.add_document(
            f"Bulletin {i}: the river level at gauge {i} was normal today.", f"common-{i}"
        )
    service.add_document("A recipe for lemon cake with almonds.", "rare", {"kind": "recipe"})
    hits = service.search("river level at the gauge", top_k=2, filters={"kind": "recipe"})
    assert [h.document_id for h in hits] == ["rare"]


def test_reingesting_a_document_replaces_its_chunks(open_service):
    service = open_service()
    ingest(service)
    old = service.get_document("kyoto")
    old_ids = {c.id for c in old.chunks}

    new = service.add_document(
        "Kyoto is famous for its autumn maple leaves.", "kyoto", {"topic": "cities", "v": 2}
    )
    assert new.created_at == old.created_at and new.updated_at >= old.updated_at
    assert new.metadata == {"topic": "cities", "v": 2}
    assert not {c.id for c in new.chunks} & old_ids
    assert [c.id for c in service.chunks_of("kyoto")] == [c.id for c in new.chunks]
    hits = service.search("Buddhist temples capital of Japan", top_k=20)
    assert not {h.chunk_id for h in hits} & old_ids
    assert all("temples" not in h.text for h in hits)
    assert sum(d.id == "kyoto" for d in service.list_documents()) == 1
    service.close()
    reopened = open_service()
    assert not {h.chunk_id for h in reopened.search("Buddhist temples", top_k=20)} & old_ids


def test_hnsw_index_deletes_and_restarts(open_service):
    service = open_service(hnsw_threshold=5)
    ingest(service)
    assert service.index_kind == "hnsw"
    otter_ids = {c.id for c in service.chunks_of("otters")}
    service.delete_document("otters")
    hits = service.search("otters holding hands", top_k=10)
    assert hits and not {h.chunk_id for h in hits} & otter_ids
    service.close()
    reopened = open_service(hnsw_threshold=5)
    assert reopened.index_kind == "hnsw"
    hits = reopened.search("otters holding hands", top_k=10)
    assert len(hits) == 5 and not {h.chunk_id for h in hits} & otter_ids


def test_chunks_respect_max_tokens_and_carry_hashes(open_service, count_tokens):
    service = open_service(chunk_tokens=24)
    record = service.add_document(" ".join(ANIMALS.values()) * 5, "long")
    assert len(record.chunks) > 3
    for chunk in record.chunks:
        assert chunk.token_count == count_tokens(chunk.text) <= 24
        assert chunk.content_hash == content_hash(chunk.text)


def test_invalid_input_and_unknown_ids(open_service):
    service = open_service()
    with pytest.raises(InvalidDocument):
        service.add_document("   \n ", "blank")
    with pytest.raises(InvalidDocument):
        service.add_document("text", "bad-metadata", {"when": object()})
    with pytest.raises(DocumentNotFound):
        service.chunks_of("nope")
    assert service.get_document("nope") is None
    assert service.search("anything at all") == []
    generated = service.add_document("A document without an id.")
    assert generated.id and service.get_document(generated.id).text == "A document without an id."


def test_ingestion_and_search_from_several_threads(open_service):
    service = open_service()
    ingest(service)
    stop = threading.Event()

    def search_until_stopped() -> None:
        while not stop.is_set():
            assert service.search("volcanic heating of houses", top_k=3)

    with ThreadPoolExecutor(max_workers=2) as pool:
        searchers = [pool.submit(search_until_stopped) for _ in range(2)]
        try:
            for i in range(12):
                service.add_document(f"Extra note {i} about geothermal energy.", f"x{i % 4}")
                if i % 3 == 2:
                    service.delete_document(f"x{i % 4}")
        finally:
            stop.set()
        for searcher in searchers:
            searcher.result()  # re-raises whatever the searcher raised
    live = {d.id for d in service.list_documents()}
    hits = service.search("geothermal energy", top_k=20)
    assert {h.document_id for h in hits} <= live
    stored = {c.id for d in live for c in service.chunks_of(d)}
    assert {h.chunk_id for h in hits} <= stored
