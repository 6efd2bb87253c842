"""Selection-only runs: what each configuration keeps, judged without generating an answer.

Answer quality on the embedded model follows recall (when the kept tokens hold the gold answer,
samkv answers as often as `full`; when they do not, it never does), and selecting costs a
fraction of a generation, so selection runs sweep parameters over hundreds of questions in minutes.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from app.bench.generator import Question
from app.bench.metrics import answer_kept, answer_token_spans
from app.bench.runner import MethodConfig, context_pieces
from samkv import Engine


def select_questions(
    engine: Engine,
    questions: Sequence[Question],
    configs: Sequence[MethodConfig],
    answer_prefix: str = "",
    on_step: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """One record per (question, configuration): whether the kept tokens hold the answer and the bridge."""
    records = []
    for index, item in enumerate(questions):
        documents = engine.encode_documents(list(item.documents))
        pieces = context_pieces(engine, documents)
        answer_spans = answer_token_spans(pieces, item.answers)
        bridge_spans = _bridge_spans(pieces, [d.length for d in documents], answer_spans, item.bridge)
        for config in configs:
            started = time.perf_counter()
            kept = engine.select(item.question, documents, config.method, answer_prefix=answer_prefix, **config.params)
            kept_set = set(kept.tolist())
            record = {
                "question_index": index,
                "kind": item.kind,
                "variant": item.variant,
                "label": config.label,
                "answer_kept": answer_kept(answer_spans, kept_set),
                "bridge_kept": answer_kept(bridge_spans, kept_set) if item.bridge else None,
                "select_ms": (time.perf_counter() - started) * 1000,
                "kept_tokens": int(kept.numel()),
                "context_tokens": len(pieces),
            }
            records.append(record)
            if on_step:
                on_step(record)
    return records


def _bridge_spans(
    pieces: list[str], lengths: list[int], answer_spans: list[list[int]], bridge: str
) -> list[list[int]]:
    """The bridge's occurrences in documents without the answer: the link the question's document
    makes (the answer's own document names the bridge throughout)."""
    if not bridge:
        return []
    document_of = [i for i, length in enumerate(lengths) for _ in range(length)]
    answer_documents = {document_of[span[0]] for span in answer_spans}
    return [span for span in answer_token_spans(pieces, (bridge,)) if document_of[span[0]] not in answer_documents]


def summarise_selection(records: list[dict[str, Any]], configs: Sequence[MethodConfig]) -> list[dict[str, Any]]:
    """One row per configuration over all questions ("all"), then one per question kind and one
    per variant that occurs (the row's `group`)."""
    rows = []
    for config in configs:
        mine = [r for r in records if r["label"] == config.label]
        groups = [("all", mine)]
        for field in ("kind", "variant"):
            groups += [(value, [r for r in mine if r[field] == value]) for value in sorted({r[field] for r in mine})]
        for group, part in groups:
            if part:
                rows.append({"label": config.label, "group": group, "questions": len(part),
                             "answer_kept": _percent([r["answer_kept"] for r in part]),
                             "bridge_kept": _percent([r["bridge_kept"] for r in part]),
                             "select_ms_median": statistics.median(r["select_ms"] for r in part),
                             "kept_tokens": statistics.fmean(r["kept_tokens"] for r in part)})
    return rows


def _percent(values: list[float | None]) -> float | None:
    judged = [v for v in values if v is not None]
    return 100 * statistics.fmean(judged) if judged else None


def selection_table(rows: list[dict[str, Any]]) -> str:
    """The rows as a markdown table."""
    def cell(value: float | None) -> str:
        return "–" if value is None else f"{value:.1f}"

    lines = ["| configuration | questions | kind / variant | answer kept % | bridge kept % | select ms (p50) | kept tokens |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['label']} | {r['questions']} | {r['group']} | {cell(r['answer_kept'])} | {cell(r['bridge_kept'])} "
              f"| {r['select_ms_median']:.0f} | {r['kept_tokens']:.0f} |" for r in rows]
    return "\n".join(lines) + "\n"
