"""Splitting text into chunks measured in the language model's tokens."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from retrieval.records import content_hash

# A sentence ends at . ! ? (optionally followed by a closing quote or bracket) before
# whitespace, or at a line break, which also keeps Markdown headings and list items apart.
_SENTENCE_BREAK = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"')\]]))\s+|\s*\n\s*")
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*")
_PARAGRAPH_SEP = "\n\n"


@dataclass(frozen=True)
class Chunk:
    """A chunk before it is stored: its text, place in the document and size in tokens."""

    document_id: str
    position: int
    text: str
    token_count: int

    @property
    def content_hash(self) -> str:
        """sha256 hex of the chunk's text."""
        return content_hash(self.text)


@dataclass(frozen=True)
class _Piece:
    """A sentence (or part of an over-long one) and the separator that precedes it."""

    sep: str
    text: str


def _join(pieces: list[_Piece]) -> str:
    if not pieces:
        return ""
    return pieces[0].text + "".join(p.sep + p.text for p in pieces[1:])


@dataclass
class Chunker:
    """Split text at paragraph, then sentence, then word boundaries into chunks of at most
    `max_tokens` tokens as counted by `count_tokens` (the language model's tokenizer).

    A paragraph that fits in an empty chunk is never split across chunks. With
    `overlap_tokens` > 0, each chunk starts with the last whole sentences of the previous one,
    up to that many tokens, as long as new text still fits.
    """

    count_tokens: Callable[[str], int]
    max_tokens: int = 256
    overlap_tokens: int = 0

    def __post_init__(self) -> None:
        # One character can take up to 4 byte-level tokens; below that no cut is guaranteed.
        if self.max_tokens < 4:
            raise ValueError(f"max_tokens must be at least 4, got {self.max_tokens}")
        if not 0 <= self.overlap_tokens < self.max_tokens:
            raise ValueError(
                f"overlap_tokens must be in [0, max_tokens), got {self.overlap_tokens}"
            )

    def split(self, text: str, document_id: str) -> list[Chunk]:
        """Return the chunks of `text` in document order (empty for blank text)."""
        texts: list[str] = []
        current: list[_Piece] = []
        carried = 0  # leading pieces of `current` repeated from the previous chunk

        def fits(pieces: list[_Piece]) -> bool:
            return self.count_tokens(_join(pieces)) <= self.max_tokens

        def flush() -> None:
            nonlocal current, carried
            texts.append(_join(current))
            current = self._overlap_tail(current)
            carried = len(current)

        for paragraph in _PARAGRAPH_BREAK.split(text.strip()):
            if not paragraph.strip():
                continue
            whole = [_Piece(_PARAGRAPH_SEP, paragraph)]
            if len(current) > carried and not fits(current + whole) and fits(whole):
                flush()
            for piece in self._pieces(paragraph):
                while current and not fits(current + [piece]):
                    if len(current) > carried:
                        flush()
                    else:
                        # Overlap never crowds out new text: drop it from the front.
                        current, carried = current[1:], carried - 1
                current.append(piece)
        if len(current) > carried:
            texts.append(_join(current))
        return [
            Chunk(document_id, position, chunk_text, self.count_tokens(chunk_text))
            for position, chunk_text in enumerate(texts)
        ]

    def _overlap_tail(self, pieces: list[_Piece]) -> list[_Piece]:
        if self.overlap_tokens == 0:
            return []
        start = len(pieces)
        # Never carry a whole chunk: the next one would repeat it entirely.
        while start > 1 and self.count_tokens(_join(pieces[start - 1 :])) <= self.overlap_tokens:
            start -= 1
        return pieces[start:]

    def _pieces(self, paragraph: str) -> list[_Piece]:
        """The paragraph's sentences, each cut at word boundaries if over max_tokens."""
        pieces: list[_Piece] = []
        sep, start = _PARAGRAPH_SEP, 0
        for match in [*_SENTENCE_BREAK.finditer(paragraph), None]:
            end = match.start() if match else len(paragraph)
            sentence = paragraph[start:end].strip()
            if sentence:
                pieces.extend(self._fit_sentence(sep, sentence))
            if match:
                sep = "\n" if "\n" in match.group(0) else " "
                start = match.end()
        return pieces

    def _fit_sentence(self, sep: str, sentence: str) -> list[_Piece]:
        if self.count_tokens(sentence) <= self.max_tokens:
            return [_Piece(sep, sentence)]
        parts: list[str] = []
        for word in sentence.split():
            candidate = f"{parts[-1]} {word}" if parts else word
            if parts and self.count_tokens(candidate) <= self.max_tokens:
                parts[-1] = candidate
            elif self.count_tokens(word) <= self.max_tokens:
                parts.append(word)
            else:
                parts.extend(self._cut_word(word))
        return [_Piece(sep if i == 0 else " ", part) for i, part in enumerate(parts)]

    def _cut_word(self, word: str) -> list[str]:
        """Cut a single over-long word (a URL, a hash, base64) into character runs that fit."""
        cuts: list[str] = []
        while word:
            low, high = 1, len(word)
            # Longest prefix that fits; one character always does (max_tokens >= 4).
            while low < high:
                middle = (low + high + 1) // 2
                if self.count_tokens(word[:middle]) <= self.max_tokens:
                    low = middle
                else:
                    high = middle - 1
            cuts.append(word[:low])
            word = word[low:]
        return cuts
