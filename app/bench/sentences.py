"""Where sentences end: splitting corpus paragraphs, and cutting a model's answer after its first."""

from __future__ import annotations

import re
from collections.abc import Iterator

# . ! or ? (a closing quote or bracket may follow), then whitespace and a capital, digit or quote.
_END = re.compile(r"[.!?][\"')\]]?(?=\s+[A-Z0-9\"'(])")
# A full stop after an initial ("J. Smith") or a common abbreviation ends no sentence.
_NOT_AN_END = re.compile(r"(?:\b[A-Z]|\b(?:Mr|Mrs|Ms|Dr|St|Mt|No|vs|Jr|Sr|Co|Corp|Inc|Ltd|e\.g|i\.e|etc))\.$")
_TERMINAL = (".", "!", "?", ".\"", "!\"", "?\"", ".'", ".)")


def sentence_ends(text: str) -> Iterator[int]:
    """The index just past each sentence end in `text` that another sentence follows."""
    for match in _END.finditer(text):
        if not _NOT_AN_END.search(text[: match.start() + 1]):
            yield match.end()


def split_sentences(paragraph: str) -> list[str]:
    """A paragraph's sentences, stripped."""
    sentences, start = [], 0
    for end in sentence_ends(paragraph):
        sentences.append(paragraph[start:end].strip())
        start = end
    tail = paragraph[start:].strip()
    return sentences + ([tail] if tail else [])


def first_sentence(text: str) -> tuple[str, bool]:
    """The answer up to the end of its first sentence or line, and whether such an end was seen.

    Leading whitespace is dropped first. A decimal point ("3.5"), an initial ("J. Smith") or an
    abbreviation ("St. Ives") ends no sentence; the answer's last full stop does.
    """
    stripped = text.lstrip()
    line, newline, _ = stripped.partition("\n")
    end = next(sentence_ends(line), None)
    if end is not None:
        return line[:end], True
    line = line.rstrip()
    return line, bool(newline) or line.endswith(_TERMINAL)


def cut_answer(text: str, generated_tokens: int, max_new_tokens: int) -> tuple[str, bool]:
    """The answer cut after its first sentence or line, and whether decoding hit the token
    limit before any such end (the answer may be incomplete)."""
    answer, ended = first_sentence(text)
    return answer, generated_tokens >= max_new_tokens and not ended


def first_sentence_ended(text: str) -> bool:
    """Whether decoding may stop: the answer so far has a line break, or a sentence end that
    another sentence follows (a full stop alone may still become "3.5" or "J. Smith")."""
    stripped = text.lstrip()
    line, newline, _ = stripped.partition("\n")
    return bool(newline) or next(sentence_ends(line), None) is not None

