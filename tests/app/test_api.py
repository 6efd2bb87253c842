"""The HTTP API end to end: ingest, jobs, query (plain and streamed), delete, errors, metrics."""

from __future__ import annotations

import itertools
import json
import time

import pytest

from tests.app.conftest import FACT_DOCUMENT, parse_sse

pytestmark = pytest.mark.slow

QUESTION = "What is the vault code at the Oriel bank?"


def _assert_error(response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "code"}
    assert error["message"]
    return error


@pytest.mark.parametrize("method", ["full", "samkv"])
def test_query_answers_the_fact(client, fact_documents, method):
    response = client.post("/v1/query", json={"question": QUESTION, "method": method})
    assert response.status_code == 200, response.text
    body = response.json()
    assert "4471" in body["answer"], (body["answer"], body["stats"], [s["text"][:30] for s in body["sources"]])
    assert body["sources"][0]["document_id"] == "oriel-bank"
    assert body["sources"][0]["text"] == FACT_DOCUMENT
    assert set(body["sources"][0]) == {"document_id", "chunk_id", "score", "text"}
    stats = body["stats"]
    for key in ("method", "context_tokens", "kept_tokens", "recomputed_tokens", "keep_ratio",
                "kv_bytes_decode", "kv_bytes_peak", "ttft_ms", "total_ms", "tokens_per_s"):
        assert key in stats
    assert stats["method"] == method
    if method == "samkv":
        assert stats["kept_tokens"] < stats["context_tokens"]


def test_query_streams_server_sent_events(client, fact_documents):
    body = {"question": QUESTION, "stream": True, "keep_ratio": 0.5}
    with client.stream("POST", "/v1/query", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = parse_sse(response.iter_lines())
    names = [name for name, _ in events]
    assert names[0] == "sources" and names[-1] == "done"
    assert names.count("token") >= 2
    assert json.loads(events[0][1])["sources"][0]["document_id"] == "oriel-bank"
    answer = "".join(json.loads(data)["text"] for name, data in events if name == "token")
    assert "4471" in answer
    done = json.loads(events[-1][1])
    assert done["stats"]["method"] == "samkv"
    assert done["stats"]["keep_ratio"] <= 0.6


def test_filters_restrict_the_sources(client, fact_documents):
    body = {"question": QUESTION, "filters": {"topic": "bank"}, "top_k": 4, "method": "naive",
            "max_new_tokens": 4}
    response = client.post("/v1/query", json=body)
    assert response.status_code == 200, response.text
    assert [s["document_id"] for s in response.json()["sources"]] == ["oriel-bank"]


def test_ingest_is_asynchronous_with_a_pollable_job(client):
    text = "The Kestrel night train leaves Ambleford at 23:40 from platform 9."
    response = client.post("/v1/documents", json={"documents": [{"text": text}]})
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert set(accepted) == {"job_id", "document_ids"}
    deadline = time.monotonic() + 300
    while True:
        job = client.get(f"/v1/jobs/{accepted['job_id']}").json()
        assert job["status"] in ("queued", "running", "done")
        assert 0.0 <= job["progress"] <= 1.0
        if job["status"] == "done":
            break
        if time.monotonic() > deadline:
            pytest.fail(f"the ingestion job did not finish: {job}")
        time.sleep(0.2)
    assert job["progress"] == 1.0
    assert job["chunks_stored"] == job["chunks_total"] >= 1
    document = client.get(f"/v1/documents/{accepted['document_ids'][0]}").json()
    assert document["text"] == text
    assert document["chunks"][0]["text"] == text


def test_upload_then_delete(client, fact_documents):
    files = [("files", ("quarry.md", b"# Quarry\n\nThe Brenn quarry gate code is 5190.", "text/markdown")),
             ("files", ("page.html", (b"<html><body><p>Mount Ulvar is 2210 metres high.</p>"
                                     b"<script>alert(1)</script></body></html>"), "text/html"))]
    response = client.post("/v1/documents?wait=true", files=files)
    assert response.status_code == 200, response.text
    accepted = response.json()
    assert accepted["status"] == "done" and accepted["progress"] == 1.0
    quarry, page = accepted["document_ids"]
    listed = {d["id"]: d for d in client.get("/v1/documents").json()["documents"]}
    assert listed[quarry]["metadata"] == {"filename": "quarry.md"}
    html = client.get(f"/v1/documents/{page}").json()
    assert "2210" in html["text"] and "alert" not in html["text"]

    question = {"question": "What is the Brenn quarry gate code?", "method": "naive",
                "max_new_tokens": 4, "top_k": 1}
    assert client.post("/v1/query", json=question).json()["sources"][0]["document_id"] == quarry

    assert client.delete(f"/v1/documents/{quarry}").json() == {"id": quarry, "deleted": True}
    _assert_error(client.get(f"/v1/documents/{quarry}"), 404)
    _assert_error(client.delete(f"/v1/documents/{quarry}"), 404)
    sources = client.post("/v1/query", json=question | {"top_k": 8}).json()["sources"]
    assert quarry not in {s["document_id"] for s in sources}


def test_validation_errors_have_the_openai_shape(client):
    assert _assert_error(client.post("/v1/query", json={}), 422)["type"] == "invalid_request_error"
    _assert_error(client.post("/v1/query", json={"question": "x", "method": "nope"}), 422)
    _assert_error(client.post("/v1/query", json={"question": "x", "keep_ratio": 2}), 422)
    _assert_error(client.post("/v1/query", json={"question": "x", "top_k": 0}), 422)
    _assert_error(client.post("/v1/query", json={"question": "   "}), 422)
    _assert_error(client.post("/v1/query", content=b"{not json", headers={"content-type": "application/json"}), 422)
    _assert_error(client.post("/v1/documents", json={"documents": []}), 422)
    _assert_error(client.post("/v1/documents", json={"documents": [{"text": "  "}]}), 422)
    _assert_error(client.post("/v1/documents", json={"documents": [{"id": "a", "text": "x"},
                                                                   {"id": "a", "text": "y"}]}), 422)
    unsupported = client.post("/v1/documents", files=[("files", ("tool.exe", b"MZ", "application/octet-stream"))])
    assert _assert_error(unsupported, 422)["code"] == "unsupported_file_type"


def test_unknown_ids_are_404(client):
    assert _assert_error(client.get("/v1/jobs/no-such-job"), 404)["code"] == "not_found"
    _assert_error(client.get("/v1/documents/no-such-document"), 404)
    _assert_error(client.delete("/v1/documents/no-such-document"), 404)
    _assert_error(client.get("/v1/no-such-route"), 404)


def test_oversized_body_is_413(client, app_settings):
    big = "x" * (app_settings.max_request_bytes + 1)
    response = client.post("/v1/documents", json={"documents": [{"text": big}]})
    assert _assert_error(response, 413)["code"] == "payload_too_large"


def test_health_readiness_docs_and_metrics(client, fact_documents):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["status"] == "ready"
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/documents", "/v1/query", "/v1/chat/completions", "/v1/jobs/{job_id}"} <= set(paths)
    client.post("/v1/query", json={"question": QUESTION, "max_new_tokens": 2})
    metrics = client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert 'http_requests_total{method="POST",route="/v1/query",status="200"}' in text
    assert "http_request_duration_seconds_bucket" in text
    assert "generation_time_to_first_token_seconds_count" in text
    assert 'generation_kept_tokens_total{method="samkv"}' in text
    assert 'kvstore_hits_total{tier=' in text


def test_selection_gives_the_kept_spans_per_source(client, fact_documents):
    body = {"question": QUESTION, "top_k": 2, "keep_ratio": 0.3, "max_new_tokens": 4,
            "include_selection": True}
    answer = client.post("/v1/query", json=body).json()
    selection = answer["selection"]
    assert [(s["document_id"], s["chunk_id"]) for s in selection] == [
        (s["document_id"], s["chunk_id"]) for s in answer["sources"]]
    kept_total = sum(s["kept_tokens"] for s in selection)
    assert kept_total == answer["stats"]["kept_tokens"] < answer["stats"]["context_tokens"]
    for source, chosen in zip(answer["sources"], selection, strict=True):
        spans = [(span["start"], span["end"]) for span in chosen["kept"]]
        assert all(0 <= start < end <= len(source["text"]) for start, end in spans)
        assert all(end < start for (_, end), (start, _) in itertools.pairwise(spans))  # merged runs
    fact = selection[0]
    assert answer["sources"][0]["text"] == FACT_DOCUMENT
    assert fact["kept"] and fact["kept_share"] == pytest.approx(fact["kept_tokens"] / fact["tokens"])

    with client.stream("POST", "/v1/query", json=body | {"stream": True}) as response:
        events = parse_sse(response.iter_lines())
    assert json.loads(events[-1][1])["selection"] == selection
    plain = client.post("/v1/query", json=body | {"include_selection": False}).json()
    assert plain["selection"] is None


def test_openapi_documents_the_selection(client):
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    assert "include_selection" in schemas["QueryIn"]["properties"]
    assert schemas["QueryIn"]["properties"]["include_selection"]["description"]
    fields = schemas["SourceSelection"]["properties"]
    assert {"kept", "recomputed", "kept_share", "tokens"} <= set(fields)
    assert all(fields[name].get("description") for name in ("kept", "recomputed", "kept_share"))
    assert schemas["CharSpan"]["properties"]["start"]["description"]
