"""Answer quality as in SQuAD: normalised exact match and token F1, plus containment; and whether a
selection kept the answer's tokens."""

from __future__ import annotations

import re
import string
from bisect import bisect_left, bisect_right
from collections import Counter
from itertools import accumulate

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


def normalize(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces (SQuAD's normalisation)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, answers: tuple[str, ...] | list[str]) -> float:
    return float(any(normalize(prediction) == normalize(a) for a in answers))


def contains_match(prediction: str, answers: tuple[str, ...] | list[str]) -> float:
    """1 when a normalised gold answer appears, as whole words, in the normalised prediction."""
    padded = f" {normalize(prediction)} "
    return float(any(f" {normalize(a)} " in padded for a in answers if normalize(a)))


def f1(prediction: str, answers: tuple[str, ...] | list[str]) -> float:
    def score(gold: str) -> float:
        predicted, expected = normalize(prediction).split(), normalize(gold).split()
        common = sum((Counter(predicted) & Counter(expected)).values())
        if not predicted or not expected or common == 0:
            return float(predicted == expected)
        precision, recall = common / len(predicted), common / len(expected)
        return 2 * precision * recall / (precision + recall)

    return max(score(a) for a in answers)


def answer_token_spans(pieces: list[str], answers: tuple[str, ...] | list[str]) -> list[list[int]]:
    """Every occurrence of a gold answer in a context, as the indices of the tokens that spell it.

    `pieces` are the context's tokens decoded one by one; an occurrence is a case-sensitive match
    of the answer text bounded by non-alphanumeric characters, and its tokens are those whose
    characters overlap it.
    """
    text = "".join(pieces)
    ends = list(accumulate(len(piece) for piece in pieces))
    spans = []
    for answer in answers:
        for match in re.finditer(rf"(?<![0-9A-Za-z]){re.escape(answer)}(?![0-9A-Za-z])", text):
            first = bisect_right(ends, match.start())
            last = bisect_left(ends, match.end())
            spans.append(list(range(first, last + 1)))
    return spans


def answer_kept(spans: list[list[int]], kept: set[int]) -> float | None:
    """1 when every token of some occurrence of the answer is kept, 0 when none is whole, None
    when the answer does not occur in the context (a selection cannot be judged there)."""
    if not spans:
        return None
    return float(any(all(index in kept for index in span) for span in spans))
