"""What a method kept of each source, as character spans of the source's text."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from app.schemas import CharSpan, Source, SourceSelection

TokenSpans = Sequence[tuple[int, int]]


def char_spans(indices: Sequence[int], token_spans: TokenSpans) -> list[CharSpan]:
    """The tokens at `indices` as character spans, adjacent tokens merged into one span.

    Tokens that cover no character (a template's own tokens) are skipped; runs that end up
    touching are merged too, so the spans are sorted, disjoint and never empty.
    """
    spans: list[CharSpan] = []
    for index in sorted(set(indices)):
        if not 0 <= index < len(token_spans):
            continue
        start, end = token_spans[index]
        if start >= end:
            continue
        if spans and start <= spans[-1].end:
            spans[-1].end = max(spans[-1].end, end)
        else:
            spans.append(CharSpan(start=start, end=end))
    return spans


def source_selections(
    sources: Sequence[Source],
    kept_per_document: Sequence[Sequence[int]],
    recomputed_per_document: Sequence[Sequence[int]],
    token_spans_of: Callable[[str], TokenSpans],
) -> list[SourceSelection]:
    """One `SourceSelection` per source: the engine's per-document token indices (indices into
    each document's own encoded tokens) turned into spans of the source's text."""
    selections = []
    for source, kept, recomputed in zip(sources, kept_per_document, recomputed_per_document, strict=True):
        token_spans = token_spans_of(source.text)
        tokens = len(token_spans)
        selections.append(
            SourceSelection(
                document_id=source.document_id,
                chunk_id=source.chunk_id,
                tokens=tokens,
                kept_tokens=len(kept),
                recomputed_tokens=len(recomputed),
                kept_share=min(1.0, len(kept) / tokens) if tokens else 0.0,
                kept=char_spans(kept, token_spans),
                recomputed=char_spans(recomputed, token_spans),
            )
        )
    return selections
