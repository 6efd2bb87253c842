"""Answer quality as in SQuAD: normalised exact match and token F1, plus containment."""

from __future__ import annotations

import re
import string
from collections import Counter

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
