"""Hostile input meets clear limits: every refusal is a 4xx with the API's error body."""

from __future__ import annotations

import httpx
import pytest

from tests.reliability.harness import API_KEY

pytestmark = pytest.mark.slow


@pytest.fixture
def client(inprocess_server):
    with httpx.Client(base_url=inprocess_server, headers={"Authorization": f"Bearer {API_KEY}"},
                      timeout=300) as http:
        yield http


def _error(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "code"} and error["message"]
    if code is not None:
        assert error["code"] == code, error
    return error


def test_a_chunked_body_over_the_limit_is_refused(client, inprocess_settings):
    limit = inprocess_settings.max_request_bytes

    def chunks():  # no Content-Length: the body arrives chunked, its size unknown up front
        for _ in range(limit // 1024 + 2):
            yield b"x" * 1024

    response = client.post("/v1/documents", content=chunks(),
                           headers={"content-type": "application/json"})
    _error(response, 413, "payload_too_large")

    def small():
        yield b'{"question": "What is the '
        yield b'vault code at Oriel?", "max_new_tokens": 1}'

    ok = client.post("/v1/query", content=small(), headers={"content-type": "application/json"})
    assert ok.status_code == 200, ok.text


@pytest.mark.parametrize("name", ["../evil.txt", "dir/notes.md", "..\\evil.txt", "/etc/passwd.txt",
                                  "..", "a" * 300 + ".txt"])
def test_file_names_with_path_parts_are_refused(client, name):
    response = client.post("/v1/documents", files=[("files", (name, b"some text", "text/plain"))])
    _error(response, 422, "invalid_file_name")


def test_unsupported_file_types_are_refused(client):
    for name in ("tool.exe", "archive.zip", "noextension"):
        response = client.post("/v1/documents", files=[("files", (name, b"MZ", "application/octet-stream"))])
        _error(response, 422, "unsupported_file_type")


def test_request_sizes_are_bounded(client, inprocess_settings):
    too_many = {"documents": [{"text": f"document {n}"} for n in
                              range(inprocess_settings.max_documents_per_request + 1)]}
    _error(client.post("/v1/documents", json=too_many), 413, "payload_too_large")
    files = [("files", (f"f{n}.txt", b"text", "text/plain"))
             for n in range(inprocess_settings.max_documents_per_request + 1)]
    _error(client.post("/v1/documents", files=files), 413, "payload_too_large")
    long_question = "why " * inprocess_settings.max_question_chars
    _error(client.post("/v1/query", json={"question": long_question}), 422, "question_too_long")
    over = inprocess_settings.max_new_tokens_limit + 1
    _error(client.post("/v1/query", json={"question": "why?", "max_new_tokens": over}), 422,
           "max_new_tokens_too_large")
    chat = {"messages": [{"role": "user", "content": "why?"}], "max_tokens": over}
    _error(client.post("/v1/chat/completions", json=chat), 422, "max_new_tokens_too_large")
    _error(client.post("/v1/query", json={"question": "why?", "top_k": 65}), 422, "invalid_value")
    top_k = inprocess_settings.max_top_k + 1
    _error(client.post("/v1/query", json={"question": "why?", "top_k": top_k}), 422, "top_k_too_large")
    _error(client.post("/v1/query", json={"question": "why?", "max_new_tokens": 5000}), 422)
