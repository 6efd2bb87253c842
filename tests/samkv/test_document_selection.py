"""What a generation kept, per document, lines up with the character spans of each document's tokens."""

from __future__ import annotations

import pytest

from tests.conftest import DOCUMENTS

QUESTION = "What is the vault code at the Oriel bank?"


def test_token_spans_cover_the_text_and_match_each_stored_token(tiny_engine):
    engine = tiny_engine("llama")
    text = "  " + DOCUMENTS[2] + "\n"
    spans = engine.document_token_spans(text)
    stored = engine.encode_document(text).token_ids.tolist()
    assert len(spans) == len(stored)
    assert "".join(text[start:end] for start, end in spans) == text.strip()
    separator = len(engine.prompt.document(text)) - len(engine.tokenizer(text.strip(), add_special_tokens=False)["input_ids"])
    for (start, end), token in zip(spans[: len(stored) - separator], stored):
        assert text[start:end] == engine.tokenizer.decode([token])
    assert all(start == end == len(text.rstrip()) for start, end in spans[len(stored) - separator :])


@pytest.mark.parametrize("method, params", [("samkv", {"keep_ratio": 0.3, "block_size": 4}), ("epic", {"k": 5})])
def test_kept_and_recomputed_per_document_are_indices_into_each_documents_tokens(tiny_engine, method, params):
    engine = tiny_engine("llama")
    docs = engine.encode_documents(DOCUMENTS)
    out = engine.generate(QUESTION, docs, method, max_new_tokens=2, **params)
    offsets = [sum(d.length for d in docs[:i]) for i in range(len(docs))]
    flat = [offsets[i] + t for i, kept in enumerate(out.kept_per_document) for t in kept]
    assert flat == out.kept_indices
    for text, doc, kept in zip(DOCUMENTS, docs, out.kept_per_document):
        spans = engine.document_token_spans(text)
        kept_text = "".join(text[spans[t][0] : spans[t][1]] for t in kept)
        assert kept_text == engine.tokenizer.decode(doc.token_ids[kept].tolist()).rstrip("\n")
    if method == "samkv":
        # The first document's kept tokens see what they were encoded with: they keep their stored KV.
        assert out.recomputed_per_document == [[], *out.kept_per_document[1:]]
    else:
        assert out.recomputed_per_document == [[], *([list(range(5))] * (len(docs) - 1))]


def test_a_stream_exposes_the_selection_once_iterated(tiny_engine):
    engine = tiny_engine("llama")
    docs = engine.encode_documents(DOCUMENTS[:2])
    stream = engine.stream(QUESTION, docs, "samkv", keep_ratio=0.5, block_size=4, max_new_tokens=2)
    assert stream.kept_per_document == []
    list(stream)
    first = [t for t in stream.kept_indices if t < docs[0].length]
    assert stream.kept_per_document[0] == first
    assert stream.kept_per_document == engine.generate(
        QUESTION, docs, "samkv", keep_ratio=0.5, block_size=4, max_new_tokens=2
    ).kept_per_document
