"""Chunking in the language model's tokens: limits, boundaries, overlap."""

from __future__ import annotations

import itertools
import random
import re

import pytest

from retrieval import Chunker

WORDS = [
    "the",
    "index",
    "keeps",
    "every",
    "chunk",
    "of",
    "a",
    "document",
    "under",
    "its",
    "own",
    "stable",
    "id",
    "while",
    "embeddings",
    "are",
    "computed",
    "once",
    "and",
    "stored",
    "next",
    "to",
    "the",
    "text",
    "so",
    "that",
    "a",
    "restart",
    "never",
    "recomputes",
    "them",
]


def random_text(rng: random.Random) -> str:
    """Paragraphs of sentences of varied length, with over-long sentences and words."""
    paragraphs = []
    for _ in range(rng.randint(1, 8)):
        sentences = []
        for _ in range(rng.randint(1, 12)):
            length = rng.choice([3, 8, 15, 40, 300])
            words = [rng.choice(WORDS) for _ in range(length)]
            if rng.random() < 0.1:
                words.append("https://example.org/" + "x9Ʃ" * rng.randint(50, 400))
            sentences.append(" ".join(words).capitalize() + rng.choice([".", "!", "?"]))
        paragraphs.append(rng.choice([" ", "\n"]).join(sentences))
    return "\n\n".join(paragraphs)


def words_of(text: str) -> list[str]:
    return text.split()


@pytest.mark.parametrize("max_tokens, overlap", [(16, 0), (64, 0), (64, 16), (256, 0), (256, 64)])
def test_chunks_never_exceed_max_tokens_and_keep_all_text(count_tokens, max_tokens, overlap):
    rng = random.Random(max_tokens * 1000 + overlap)
    chunker = Chunker(count_tokens, max_tokens=max_tokens, overlap_tokens=overlap)
    for trial in range(6):
        text = random_text(rng)
        chunks = chunker.split(text, document_id=f"doc-{trial}")
        assert chunks, "non-blank text gives chunks"
        assert [c.position for c in chunks] == list(range(len(chunks)))
        for chunk in chunks:
            assert chunk.document_id == f"doc-{trial}"
            assert chunk.token_count == count_tokens(chunk.text) <= max_tokens
            assert chunk.text.strip() == chunk.text and chunk.text
        if overlap == 0:
            # Word cuts split a word in pieces; compare the text without any whitespace.
            joined = "".join("".join(c.text.split()) for c in chunks)
            assert joined == "".join(text.split())


def test_paragraphs_that_fit_are_not_split(count_tokens):
    paragraphs = [
        " ".join(f"Sentence {p}.{s} talks about topic {p}." for s in range(5)) for p in range(6)
    ]
    chunker = Chunker(count_tokens, max_tokens=80)
    assert all(count_tokens(p) <= 80 for p in paragraphs)
    chunks = chunker.split("\n\n".join(paragraphs), "d")
    for paragraph in paragraphs:
        assert any(paragraph in chunk.text for chunk in chunks), paragraph


def test_long_paragraph_splits_at_sentence_boundaries(count_tokens):
    sentences = [f"Fact number {i} is that the code of item {i} is K{i * 7}." for i in range(40)]
    chunks = Chunker(count_tokens, max_tokens=50).split(" ".join(sentences), "d")
    assert len(chunks) > 1
    for chunk in chunks:
        assert chunk.text.endswith("."), chunk.text
        assert re.match(r"Fact number \d+", chunk.text), chunk.text


def test_overlap_repeats_the_previous_chunks_last_sentences(count_tokens):
    sentences = [f"Step {i} moves the marker to square {i}." for i in range(30)]
    chunks = Chunker(count_tokens, max_tokens=48, overlap_tokens=16).split(" ".join(sentences), "d")
    assert len(chunks) > 2
    for previous, current in itertools.pairwise(chunks):
        last_sentence = re.findall(r"Step \d+ [^.]*\.", previous.text)[-1]
        assert current.text.startswith(last_sentence)
        assert current.text != previous.text


def test_markdown_lines_are_boundaries(count_tokens):
    text = "# Title\n- first item without a period\n- second item\n\nBody text."
    chunks = Chunker(count_tokens, max_tokens=6).split(text, "d")
    assert [c.text for c in chunks][:3] == [
        "# Title",
        "- first item without a period",
        "- second item",
    ]


def test_blank_text_gives_no_chunks(count_tokens):
    assert Chunker(count_tokens).split(" \n\n \t", "d") == []


@pytest.mark.parametrize("max_tokens, overlap", [(2, 0), (64, 64), (64, -1)])
def test_invalid_sizes_are_refused(count_tokens, max_tokens, overlap):
    with pytest.raises(ValueError):
        Chunker(count_tokens, max_tokens=max_tokens, overlap_tokens=overlap)
