"""Runs every method configuration on the same questions, documents, order and decoding settings."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from app.bench.generator import Question
from app.bench.metrics import (
    answer_kept,
    answer_token_spans,
    contains_match,
    exact_match,
    f1,
    normalize,
)
from samkv import DocumentKV, DocumentSource, Engine

DENSE = {"full", "naive", "epic"}
ABLATIONS: dict[str, dict[str, Any]] = {
    "complement=False": {"complement": False},
    "recompute=False": {"recompute": False},
    "global_budget=False": {"global_budget": False},
    "debias=none": {"debias": "none"},
    "debias=difference": {"debias": "difference"},
    "block_size=1": {"block_size": 1},
    # The complementary term's formulations (samkv.complement), each at its own λ.
    "complement=summary": {"complement_mode": "summary", "complement_weight": 0.5},
    "complement=reprobe": {"complement_mode": "reprobe", "complement_weight": 0.3},
    "complement=entity": {"complement_mode": "entity", "complement_weight": 0.3},
}


@dataclass(frozen=True)
class MethodConfig:
    """One row of the results: a method, its ratio (keep ratio, or recompute ratio for cacheblend)."""

    label: str
    method: str
    keep_ratio: float
    params: dict[str, Any] = field(default_factory=dict)


def method_configs(
    methods: Sequence[str],
    keep_ratios: Sequence[float],
    ablations: Iterable[str] = tuple(ABLATIONS),
    ablation_ratio: float = 0.15,
    extra_params: dict[str, dict[str, Any]] | None = None,
) -> list[MethodConfig]:
    """The rows to run; `full` first, since agreement is measured against it."""
    extra_params = extra_params or {}
    configs: list[MethodConfig] = []
    for method in sorted(set(methods), key=lambda m: (m != "full", list(methods).index(m))):
        base = dict(extra_params.get(method, {}))
        if method in DENSE:
            configs.append(MethodConfig(method, method, 1.0, base))
        elif method == "cacheblend":
            configs += [MethodConfig(f"cacheblend@{r:g}", method, r, {**base, "recompute_ratio": r}) for r in keep_ratios]
        else:
            configs += [MethodConfig(f"{method}@{r:g}", method, r, {**base, "keep_ratio": r}) for r in keep_ratios]
    if "samkv" in methods:
        base = dict(extra_params.get("samkv", {}))
        for name in ablations:
            configs.append(
                MethodConfig(f"samkv[{name}]@{ablation_ratio:g}", "samkv", ablation_ratio,
                             {**base, "keep_ratio": ablation_ratio, **ABLATIONS[name]})
            )
    return configs


SourceFactory = Callable[[list[DocumentKV]], DocumentSource | list[DocumentKV]]


def run_questions(
    engine: Engine,
    questions: Sequence[Question],
    configs: Sequence[MethodConfig],
    max_new_tokens: int = 16,
    answer_prefix: str = "",
    source_factory: SourceFactory | None = None,
    on_encoded: Callable[[list[DocumentKV], list[str]], None] | None = None,
    on_step: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """One record per (question, configuration).

    `on_encoded` receives each question's caches once (e.g. to store them); `source_factory`
    then opens them for every configuration, and the time it takes counts towards the time to
    first token, as it would in the service. `on_step` receives each record as it is made.
    """
    records: list[dict[str, Any]] = []
    for index, item in enumerate(questions):
        documents = engine.encode_documents(list(item.documents)) if item.documents else []
        if on_encoded:
            on_encoded(documents, list(item.documents))
        full_text: str | None = None
        spans = answer_token_spans(context_pieces(engine, documents), item.answers)
        for config in configs:
            opened = time.perf_counter()
            source = source_factory(documents) if source_factory else documents
            load_ms = (time.perf_counter() - opened) * 1000
            out = engine.generate(
                item.question, source, config.method, max_new_tokens=max_new_tokens,
                score_answer=item.answers[0], answer_prefix=answer_prefix, **config.params,
            )
            if config.method == "full" and not config.params:
                full_text = out.text
            stats = {**out.stats, "ttft_ms": out.stats["ttft_ms"] + load_ms}
            record = {
                "question_index": index,
                "kind": item.kind,
                "label": config.label,
                "method": config.method,
                "keep_ratio": config.keep_ratio,
                "answer": out.text,
                "gold": item.answers[0],
                "exact_match": exact_match(out.text, item.answers),
                "contains_match": contains_match(out.text, item.answers),
                "f1": f1(out.text, item.answers),
                "answer_logprob": out.answer_logprob,
                "answer_kept": answer_kept(spans, set(out.kept_indices)),
                "agrees_with_full": None if full_text is None else float(normalize(out.text) == normalize(full_text)),
                **{key: stats[key] for key in (
                    "ttft_ms", "tokens_per_s", "kv_bytes_decode", "kv_bytes_peak", "recomputed_tokens",
                    "kept_tokens", "context_tokens", "total_ms",
                )},
            }
            records.append(record)
            if on_step:
                on_step(record)
    return records


def context_pieces(engine: Engine, documents: list[DocumentKV]) -> list[str]:
    """The context's tokens decoded one by one, in prompt order."""
    return [engine.tokenizer.decode([token]) for document in documents for token in document.token_ids.tolist()]


def _p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def summarise(records: list[dict[str, Any]], configs: Sequence[MethodConfig]) -> list[dict[str, Any]]:
    """One row per configuration with the metrics under the names results.json promises."""
    rows = []
    for config in configs:
        mine = [r for r in records if r["label"] == config.label]
        if not mine:
            continue
        row = _aggregate(mine)
        row.update(label=config.label, method=config.method, keep_ratio=config.keep_ratio, params=config.params)
        kinds = sorted({r["kind"] for r in mine})
        if len(kinds) > 1:
            row["by_kind"] = {kind: _aggregate([r for r in mine if r["kind"] == kind]) for kind in kinds}
        rows.append(row)
    return rows


def _aggregate(records: list[dict[str, Any]]) -> dict[str, Any]:
    ttft = [r["ttft_ms"] for r in records]
    agreement = [r["agrees_with_full"] for r in records if r["agrees_with_full"] is not None]
    judged = [r["answer_kept"] for r in records if r.get("answer_kept") is not None]
    return {
        "questions": len(records),
        "exact_match": 100 * _mean([r["exact_match"] for r in records]),
        "contains_match": 100 * _mean([r["contains_match"] for r in records]),
        "f1": 100 * _mean([r["f1"] for r in records]),
        "answer_logprob": _mean([r["answer_logprob"] for r in records]),
        "agreement_with_full": 100 * _mean(agreement) if agreement else None,
        "answer_kept": 100 * _mean(judged) if judged else None,
        "ttft_ms_median": statistics.median(ttft),
        "ttft_ms_p90": _p90(ttft),
        "decode_tokens_per_s": _mean([r["tokens_per_s"] for r in records if r["tokens_per_s"] > 0]),
        "kv_bytes_decode": _mean([r["kv_bytes_decode"] for r in records]),
        "kv_bytes_peak": _mean([r["kv_bytes_peak"] for r in records]),
        "recomputed_tokens": _mean([r["recomputed_tokens"] for r in records]),
        "kept_tokens": _mean([r["kept_tokens"] for r in records]),
        "context_tokens": _mean([r["context_tokens"] for r in records]),
    }
