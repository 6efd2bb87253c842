"""The model raising inside a request: that request gets an error in the API's shape, the
generation slot is freed, and the server goes on answering."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.app.conftest import parse_sse
from tests.reliability.facts import fact
from tests.reliability.harness import API_KEY, FaultyEngine

pytestmark = pytest.mark.slow

QUESTION = fact(0).question


@pytest.fixture
def client(inprocess_server):
    with httpx.Client(base_url=inprocess_server, headers={"Authorization": f"Bearer {API_KEY}"},
                      timeout=300) as http:
        yield http


def _events(client: httpx.Client, path: str, body: dict) -> list[tuple[str, str]]:
    with client.stream("POST", path, json=body) as response:
        assert response.status_code == 200
        return parse_sse(response.iter_lines())


def test_failure_before_decoding_is_a_500_with_the_error_body(client):
    response = client.post("/v1/query", json={"question": QUESTION + FaultyEngine.FAULT_AT_START})
    assert response.status_code == 500
    error = response.json()["error"]
    assert error == {"message": "internal server error; the server log has the details",
                     "type": "server_error", "code": "internal_error"}
    streamed = client.post("/v1/query", json={"question": QUESTION + FaultyEngine.FAULT_AT_START,
                                              "stream": True})
    assert streamed.status_code == 500  # refused before any event was sent


def test_failure_mid_stream_ends_the_stream_with_an_error_event(client):
    events = _events(client, "/v1/query",
                     {"question": QUESTION + FaultyEngine.FAULT_MID_STREAM, "stream": True})
    names = [name for name, _ in events]
    assert names[0] == "sources" and names[-1] == "error"
    assert "token" in names and "done" not in names
    assert json.loads(events[-1][1])["error"]["code"] == "internal_error"

    chat = {"messages": [{"role": "user", "content": QUESTION + FaultyEngine.FAULT_MID_STREAM}],
            "stream": True}
    chunks = [data for _, data in _events(client, "/v1/chat/completions", chat)]
    assert chunks[-1] == "[DONE]"
    assert json.loads(chunks[-2])["error"]["type"] == "server_error"


def test_the_server_keeps_answering_after_model_failures(client, figures):
    faults = (FaultyEngine.FAULT_AT_START, FaultyEngine.FAULT_MID_STREAM) * 2
    for marker in faults:
        assert client.post("/v1/query", json={"question": QUESTION + marker}).status_code == 500
    response = client.post("/v1/query", json={"question": QUESTION, "top_k": 1})
    assert response.status_code == 200, response.text
    assert response.json()["sources"][0]["document_id"] == fact(0).id
    assert client.get("/readyz").json()["generations_in_flight"] == 0
    figures["model_faults"] = {"faults_injected": len(faults), "errors_answered_500": len(faults),
                               "answer_after_faults": response.status_code}
