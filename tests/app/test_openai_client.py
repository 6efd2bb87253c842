"""The official `openai` client, unchanged, against the live server's chat completions."""

from __future__ import annotations

import openai
import pytest

from tests.app.conftest import API_KEY

pytestmark = pytest.mark.slow

MESSAGES = [
    {"role": "system", "content": "Answer from the documents."},
    {"role": "user", "content": "Who is the harbour master?"},
    {"role": "assistant", "content": "Which harbour?"},
    {"role": "user", "content": "What is the vault code at the Oriel bank?"},
]


@pytest.fixture(scope="module")
def openai_client(live_server):
    return openai.OpenAI(base_url=f"{live_server}/v1", api_key=API_KEY, max_retries=0, timeout=600)


def test_chat_completion(openai_client, fact_documents):
    completion = openai_client.chat.completions.create(
        model="samkv-rag", messages=MESSAGES, max_tokens=24,
        extra_body={"method": "samkv", "keep_ratio": 0.3, "include_selection": True},
    )
    assert "4471" in completion.choices[0].message.content
    assert completion.choices[0].finish_reason in ("stop", "length")
    assert completion.usage.completion_tokens > 0
    extra = completion.model_extra
    assert extra["sources"][0]["document_id"] == "oriel-bank"
    assert extra["stats"]["method"] == "samkv"
    selection = extra["selection"]
    assert [s["chunk_id"] for s in selection] == [s["chunk_id"] for s in extra["sources"]]
    kept = sum(s["kept_tokens"] for s in selection)
    assert kept == extra["stats"]["kept_tokens"] < extra["stats"]["context_tokens"]


def test_streamed_chat_completion(openai_client, fact_documents):
    stream = openai_client.chat.completions.create(
        model="samkv-rag", messages=MESSAGES, max_tokens=24, stream=True,
        extra_body={"method": "full", "include_selection": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].model_extra["sources"][0]["document_id"] == "oriel-bank"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert "4471" in text
    assert sum(1 for c in chunks if c.choices[0].delta.content) >= 2
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert chunks[-1].model_extra["stats"]["method"] == "full"
    # A full prefill keeps every token of every source.
    assert all(s["kept_share"] == 1.0 for s in chunks[-1].model_extra["selection"])
    assert all("selection" not in c.model_extra for c in chunks[:-1])


def test_openai_errors(openai_client, live_server):
    with pytest.raises(openai.UnprocessableEntityError):
        openai_client.chat.completions.create(model="samkv-rag", messages=[{"role": "system", "content": "x"}])
    wrong = openai.OpenAI(base_url=f"{live_server}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.PermissionDeniedError):
        wrong.chat.completions.create(model="samkv-rag", messages=MESSAGES)
