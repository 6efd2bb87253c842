"""Kept token indices turned into character spans of the source text (no model needed)."""

from __future__ import annotations

import pytest

from app.schemas import Source
from app.selection import char_spans, source_selections

TEXT = "The vault code is 4471."
# "The", " vault", " code", " is", " 44", "71", "." and a template token covering no text.
TOKENS = [(0, 3), (3, 9), (9, 14), (14, 17), (17, 20), (20, 22), (22, 23), (23, 23)]


def _texts(spans):
    return [TEXT[s.start : s.end] for s in spans]


def test_adjacent_tokens_merge_into_one_span():
    assert _texts(char_spans([4, 5, 6, 0], TOKENS)) == ["The", " 4471."]


def test_empty_and_out_of_range_tokens_are_skipped():
    assert _texts(char_spans([7, 9, 2], TOKENS)) == [" code"]
    assert char_spans([], TOKENS) == []


def test_runs_split_only_by_an_empty_token_are_merged():
    tokens = [(0, 3), (3, 3), (3, 9)]
    assert _texts(char_spans([0, 2], tokens)) == ["The vault"]


def test_source_selections_follow_the_sources():
    sources = [Source(document_id="bank", chunk_id=3, score=0.9, text=TEXT),
               Source(document_id="lake", chunk_id=4, score=0.2, text="Ice.")]

    def token_spans(text):
        return TOKENS if text == TEXT else [(0, 3), (3, 4)]

    first, second = source_selections(sources, [[4, 5], [0, 1]], [[5], []], token_spans)
    assert (first.document_id, first.chunk_id, first.tokens, first.kept_tokens) == ("bank", 3, 8, 2)
    assert _texts(first.kept) == [" 4471"] and _texts(first.recomputed) == ["71"]
    assert first.kept_share == pytest.approx(0.25)
    assert second.kept_share == 1.0 and second.recomputed == []
    with pytest.raises(ValueError):
        source_selections(sources, [[0]], [[0]], token_spans)
