"""`samkv-rag bench-load`: concurrent clients through the real server, back-pressure retries, ratios."""

from __future__ import annotations

import httpx
import pytest

from app.bench.load import ask, ratios, report, run_level, summarise
from app.bench.machine import machine, machine_phrase
from tests.app.conftest import API_KEY

pytestmark = pytest.mark.slow


# Facts of their own: the server is shared by the session's tests, and these documents must not
# answer (or crowd out the sources of) another test's question while they are stored.
LOAD_DOCUMENTS = [
    "The signal box at Quarry Junction was rebuilt in 1974 by the engineer Tomas Wyke.",
    "The ferry to Skell Island sails at 06:15 and returns at 19:30 every weekday.",
]
LOAD_QUESTIONS = ["Who rebuilt the signal box at Quarry Junction?", "When does the ferry to Skell Island sail?"]


def test_concurrent_clients_are_all_answered_with_a_time_to_first_token(live_server, client):
    documents = [{"id": f"load-doc-{i}", "text": text} for i, text in enumerate(LOAD_DOCUMENTS)]
    client.post("/v1/documents", params={"wait": "true"}, json={"documents": documents}).raise_for_status()
    headers = {"Authorization": f"Bearer {API_KEY}"}
    rows = []
    try:
        for method in ("full", "samkv"):
            answers, wall = run_level(live_server, headers, LOAD_QUESTIONS, method, clients=3, per_client=2,
                                      options={"top_k": 2, "max_new_tokens": 4})
            assert [a.method for a in answers] == [method] * 6
            assert all(a.ok and a.error == "" for a in answers), [a.error for a in answers]
            assert all(0 < a.ttft_s <= a.total_s <= wall for a in answers)
            row = summarise(answers, wall)
            assert (row["questions"], row["answered"], row["failed"]) == (6, 6, 0)
            assert row["questions_per_minute"] == pytest.approx(60 * 6 / wall)
            assert row["ttft_p50_s"] <= row["ttft_p99_s"]
            rows.append({"method": method, "clients": 3, **row})
    finally:
        for document in documents:
            client.delete(f"/v1/documents/{document['id']}").raise_for_status()
    table = report(rows, {"command": "samkv-rag bench-load", "model": "m", "documents": 2,
                          "max_concurrent_generations": "default", "cpu_count": 2, "machine": machine()})
    assert "| samkv | 3 |" in table and "questions/min ÷ full" in table
    assert "generation slots: default, 2 CPUs" in table
    assert machine_phrase({"machine": machine()}) in table


def _sse(*events: tuple[str, str]) -> bytes:
    return "".join(f"event: {name}\ndata: {data}\n\n" for name, data in events).encode()


def test_refusals_are_retried_after_retry_after_and_counted():
    replies = iter([
        httpx.Response(503, headers={"Retry-After": "0"}, json={"error": {"message": "busy"}}),
        httpx.Response(503, headers={"Retry-After": "0"}, json={"error": {"message": "busy"}}),
        httpx.Response(200, content=_sse(("sources", "[]"), ("token", '{"text": "4471"}'), ("done", "{}"))),
    ])
    transport = httpx.MockTransport(lambda request: next(replies))
    with httpx.Client(transport=transport, base_url="http://load.test") as client:
        answer = ask(client, {"question": "q", "method": "samkv"}, clients=1)
    assert answer.ok and answer.rejected == 2 and answer.ttft_s is not None


def test_an_error_event_is_a_failed_answer_with_its_message():
    reply = httpx.Response(200, content=_sse(("sources", "[]"), ("error", '{"message": "model fault"}')))
    with httpx.Client(transport=httpx.MockTransport(lambda request: reply), base_url="http://load.test") as client:
        answer = ask(client, {"question": "q", "method": "full"}, clients=1)
    assert not answer.ok and "model fault" in answer.error and answer.ttft_s is None


def test_throughput_ratios_pair_methods_at_the_same_client_count():
    rows = [
        {"method": "full", "clients": 1, "questions_per_minute": 2.0},
        {"method": "samkv", "clients": 1, "questions_per_minute": 7.0},
        {"method": "full", "clients": 4, "questions_per_minute": 4.0},
        {"method": "samkv", "clients": 4, "questions_per_minute": 14.0},
    ]
    assert ratios(rows) == [
        {"method": "samkv", "clients": 1, "throughput_vs_full": 3.5},
        {"method": "samkv", "clients": 4, "throughput_vs_full": 3.5},
    ]
