"""Decoding: deterministic greedy answers, streaming equal to generate, seeded sampling, UTF-8 pieces."""

from __future__ import annotations

import pytest
import torch

from samkv.decoding import TextPieces
from tests.conftest import DOCUMENTS

STAT_KEYS = {
    "method", "context_tokens", "kept_tokens", "recomputed_tokens", "keep_ratio", "kv_bytes_decode",
    "kv_bytes_peak", "ttft_ms", "total_ms", "tokens_per_s",
    "load_ms", "probe_ms", "select_ms", "assemble_ms",
}


@pytest.mark.parametrize("method", ["full", "naive", "cacheblend", "epic", "snapkv", "samkv"])
def test_greedy_is_deterministic_and_streaming_matches(tiny_engine, method):
    engine = tiny_engine("llama")
    docs = engine.encode_documents(DOCUMENTS)
    first = engine.generate("Who is the harbour master?", docs, method=method, max_new_tokens=12)
    second = engine.generate("Who is the harbour master?", docs, method=method, max_new_tokens=12)
    assert first.token_ids == second.token_ids and first.text == second.text
    stream = engine.stream("Who is the harbour master?", docs, method=method, max_new_tokens=12)
    pieces = list(stream)
    assert "".join(pieces) == first.text
    assert stream.token_ids == first.token_ids
    assert STAT_KEYS <= set(stream.stats)
    assert stream.stats["method"] == method
    assert stream.stats["context_tokens"] == sum(d.length for d in docs)
    # Each stage is charged only where it runs: only the methods that look before choosing probe,
    # and a full prefill reads no stored KV.
    assert (stream.stats["probe_ms"] > 0) == (method in ("snapkv", "samkv"))
    assert (stream.stats["load_ms"] > 0) == (method != "full")
    assert stream.stats["assemble_ms"] > 0 and "prefill_ms" not in stream.stats  # the question is assembled


def test_embedded_model_answers_a_lookup(embedded_engine):
    docs = embedded_engine.encode_documents(DOCUMENTS)
    for method in ("full", "samkv"):
        answer = embedded_engine.generate(
            "What is the vault code at the Oriel bank?", docs, method=method, max_new_tokens=24
        )
        assert "4471" in answer.text, (method, answer.text)


def test_seeded_sampling_is_reproducible(tiny_engine):
    engine = tiny_engine("llama")
    docs = engine.encode_documents(DOCUMENTS[:2])
    runs = [
        engine.generate("Tell me about copper.", docs, method="naive", temperature=1.0, top_p=0.9,
                        seed=seed, max_new_tokens=16).token_ids
        for seed in (7, 7, 8)
    ]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_no_documents_answers_from_the_question_alone(tiny_engine):
    engine = tiny_engine("llama")
    for method in ("full", "naive", "samkv"):
        out = engine.generate("What is two plus two?", [], method=method, max_new_tokens=4)
        assert out.stats["context_tokens"] == 0 and out.stats["kept_tokens"] == 0


def test_text_pieces_never_split_a_multibyte_character(embedded_tokenizer):
    text = "Zürich → 東京 🚀 naïve café"
    ids = embedded_tokenizer(text, add_special_tokens=False)["input_ids"]
    pieces = TextPieces(embedded_tokenizer)
    emitted = [pieces.push(i) for i in ids] + [pieces.flush()]
    assert "".join(emitted) == text
    assert all("\ufffd" not in piece for piece in emitted)


def test_answer_logprob_prefers_the_gold_answer_and_matches_scored_generation(embedded_engine):
    docs = embedded_engine.encode_documents(DOCUMENTS)
    question = "What is the vault code at the Oriel bank?"
    for method in ("full", "samkv"):
        gold = embedded_engine.answer_logprob(question, docs, "4471", method=method)
        wrong = embedded_engine.answer_logprob(question, docs, "9038", method=method)
        assert gold > wrong
        scored = embedded_engine.generate(question, docs, method=method, max_new_tokens=4, score_answer="4471")
        assert abs(scored.answer_logprob - gold) < 1e-4


def test_answer_prefix_starts_the_answer_turn(tiny_engine):
    engine = tiny_engine("llama")
    docs = engine.encode_documents(DOCUMENTS[:2])
    question, lead = "Who is the harbour master?", "The answer is:"
    ids = engine.prompt.question(question, lead)
    assert engine.tokenizer.decode(ids).endswith(engine.template.question_tail + lead)
    led = engine.generate(question, docs, method="full", max_new_tokens=1, answer_prefix=lead)
    whole = torch.cat([engine.prefix_ids, *(d.token_ids for d in docs), ids])
    with torch.inference_mode():
        expected = int(engine.loaded.model(whole[None]).logits[0, -1].argmax())
    assert led.token_ids == [expected]
    plain = engine.generate(question, docs, method="full", max_new_tokens=1)
    assert plain.stats["kv_bytes_decode"] < led.stats["kv_bytes_decode"]


def test_a_stop_callback_ends_decoding_with_the_outcome_set(tiny_engine):
    engine = tiny_engine("llama")
    docs = engine.encode_documents(DOCUMENTS)
    whole = engine.generate("Who is the harbour master?", docs, method="samkv", max_new_tokens=12)
    assert len(whole.token_ids) == 12  # a random model never emits its stop token this early
    seen: list[str] = []

    def after_three_pieces(text: str) -> bool:
        seen.append(text)
        return len(seen) == 3

    stopped = engine.generate("Who is the harbour master?", docs, method="samkv", max_new_tokens=12,
                              stop=after_three_pieces)
    assert len(seen) == 3
    assert stopped.text == seen[-1] and whole.text.startswith(stopped.text)
    assert stopped.token_ids == whole.token_ids[: len(stopped.token_ids)]
    assert len(stopped.token_ids) < 12
    assert stopped.stats["generated_tokens"] == len(stopped.token_ids)
    assert stopped.kept_per_document == whole.kept_per_document
