"""Bad input is refused with a typed error that names the problem; nothing is silently truncated."""

from __future__ import annotations

import dataclasses

import pytest

from samkv import ContextTooLong, FingerprintMismatch, InvalidRequest, UnknownMethod
from tests.conftest import DOCUMENTS


@pytest.fixture(scope="module")
def engine_and_docs(tiny_engine):
    engine = tiny_engine("llama")
    return engine, engine.encode_documents(DOCUMENTS[:2])


def test_empty_question(engine_and_docs):
    engine, docs = engine_and_docs
    with pytest.raises(InvalidRequest, match="question is empty"):
        engine.generate("   ", docs, method="naive")


def test_unknown_method(engine_and_docs):
    engine, docs = engine_and_docs
    with pytest.raises(UnknownMethod, match="unknown method 'magic'.*samkv"):
        engine.generate("Who?", docs, method="magic")


@pytest.mark.parametrize(
    "method, params, message",
    [
        ("samkv", {"keep_ratio": 0.0}, "keep_ratio must be in"),
        ("samkv", {"keep_ratio": 1.5}, "keep_ratio must be in"),
        ("samkv", {"block_size": 0}, "block_size"),
        ("samkv", {"layers": (5, 2)}, "layers must satisfy"),
        ("snapkv", {"keep_ratio": -1}, "keep_ratio must be in"),
        ("cacheblend", {"recompute_ratio": 2.0}, "recompute_ratio must be in"),
        ("cacheblend", {"check_layer": 99}, "check_layer must be below"),
        ("epic", {"k": -3}, "k must be"),
        ("epic", {"recompute_ratio": 0.0}, "recompute_ratio must be in"),
        ("snapkv", {"kernel": 4}, "kernel must be a positive odd integer"),
        ("snapkv", {"pooling": "median"}, "pooling must be one of"),
        ("cacheblend", {"recompute_ratio": 0.2, "first_ratio": 0.1}, "first_ratio must be at least"),
        ("naive", {"keep_ratio": 0.5}, "has no parameter keep_ratio"),
    ],
)
def test_parameters_out_of_range(engine_and_docs, method, params, message):
    engine, docs = engine_and_docs
    with pytest.raises(InvalidRequest, match=message):
        engine.generate("Who?", docs, method=method, max_new_tokens=2, **params)


@pytest.mark.parametrize("kwargs", [{"max_new_tokens": 0}, {"temperature": -1.0}, {"top_p": 0.0}])
def test_decoding_parameters_out_of_range(engine_and_docs, kwargs):
    engine, docs = engine_and_docs
    with pytest.raises(InvalidRequest):
        engine.generate("Who?", docs, method="naive", **kwargs)


def test_document_from_another_model(engine_and_docs):
    engine, docs = engine_and_docs
    foreign = dataclasses.replace(docs[0], fingerprint="0" * 64)
    with pytest.raises(FingerprintMismatch, match="document 1 was encoded by another model"):
        engine.generate("Who?", [docs[1], foreign], method="naive")


def test_prompt_longer_than_the_context(engine_and_docs):
    engine, docs = engine_and_docs
    many = docs * (engine.max_context // sum(d.length for d in docs) + 1)
    with pytest.raises(ContextTooLong, match="positions"):
        engine.generate("Who?", many, method="naive")
    with pytest.raises(ContextTooLong, match="split it into smaller chunks"):
        engine.encode_document("word " * engine.max_context)


def test_empty_document(engine_and_docs):
    engine, _ = engine_and_docs
    with pytest.raises(InvalidRequest, match="non-empty"):
        engine.encode_document("  ")


def test_empty_answer_for_logprob(engine_and_docs):
    engine, docs = engine_and_docs
    with pytest.raises(InvalidRequest, match="answer is empty"):
        engine.answer_logprob("Who?", docs, "", method="full")
