"""Shared fixtures: the language model's tokenizer, the embedded embedder, services on tmp dirs."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from retrieval import Embedder, RetrievalService


@pytest.fixture(scope="session")
def count_tokens() -> Callable[[str], int]:
    """Token counts of the embedded language model, as the app measures chunks."""
    from app.settings import Settings
    from samkv.runtime import load_tokenizer

    tokenizer = load_tokenizer(Settings().model)
    return lambda text: len(tokenizer(text, add_special_tokens=False).input_ids)


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    return Embedder(device="cpu")


@pytest.fixture
def open_service(
    tmp_path: Path, count_tokens: Callable[[str], int], embedder: Embedder
) -> Iterator[Callable[..., RetrievalService]]:
    """Open services on `tmp_path / "data"` (the same dir each call, to test restarts)."""
    opened: list[RetrievalService] = []

    def open_(**options: object) -> RetrievalService:
        options.setdefault("chunk_tokens", 64)
        service = RetrievalService(tmp_path / "data", count_tokens, embedder, **options)
        opened.append(service)
        return service

    yield open_
    for service in opened:
        service.close()
