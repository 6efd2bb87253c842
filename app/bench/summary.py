"""Aggregating a run's records: one row per configuration, split by question kind and variant,
with paired comparisons to `full` and the median time of every stage."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from app.bench.runner import MethodConfig
from app.bench.stats import paired_comparison

GROUPS = ("kind", "variant")  # every row is also split by these record fields


def _p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def _percent(values: list[float | None]) -> float | None:
    judged = [v for v in values if v is not None]
    return 100 * statistics.fmean(judged) if judged else None


def stage_medians(records: list[dict[str, Any]]) -> dict[str, float]:
    """The median of every `*_ms` key over the records that have it."""
    keys = sorted({key for record in records for key in record if key.endswith("_ms")})
    return {key: statistics.median(r[key] for r in records if key in r) for key in keys}


def aggregate(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The metrics of a set of records (EM, F1, contains and agreement in percent)."""
    ttft = [r["ttft_ms"] for r in records]
    return {
        "questions": len(records),
        "exact_match": 100 * _mean([r["exact_match"] for r in records]),
        "contains_match": 100 * _mean([r["contains_match"] for r in records]),
        "f1": 100 * _mean([r["f1"] for r in records]),
        "answer_logprob": _mean([r["answer_logprob"] for r in records]),
        "agreement_with_full": _percent([r["agrees_with_full"] for r in records]),
        "answer_kept": _percent([r.get("answer_kept") for r in records]),
        "hit_limit": _percent([r["hit_limit"] for r in records]),
        "ttft_ms_median": statistics.median(ttft),
        "ttft_ms_p90": _p90(ttft),
        "decode_tokens_per_s": _mean([r["tokens_per_s"] for r in records if r["tokens_per_s"] > 0]),
        "kv_bytes_decode": _mean([r["kv_bytes_decode"] for r in records]),
        "kv_bytes_peak": _mean([r["kv_bytes_peak"] for r in records]),
        "recomputed_tokens": _mean([r["recomputed_tokens"] for r in records]),
        "kept_tokens": _mean([r["kept_tokens"] for r in records]),
        "context_tokens": _mean([r["context_tokens"] for r in records]),
        "stage_ms_median": stage_medians(records),
    }


def summarise(records: list[dict[str, Any]], configs: Sequence[MethodConfig]) -> list[dict[str, Any]]:
    """One row per configuration: its metrics, `vs_full` (paired differences to the `full` row
    with 95% CIs and McNemar's exact test), and the same under `by_kind` and `by_variant`."""
    full = [r for r in records if r["label"] == "full"]
    rows = []
    for config in configs:
        mine = [r for r in records if r["label"] == config.label]
        if not mine:
            continue
        row = _with_comparison(mine, full, config.label)
        row.update(label=config.label, method=config.method, keep_ratio=config.keep_ratio, params=config.params)
        for group in GROUPS:
            values = sorted({r.get(group, "") for r in mine})
            row[f"by_{group}"] = {
                value: _with_comparison([r for r in mine if r.get(group, "") == value],
                                        [r for r in full if r.get(group, "") == value], config.label)
                for value in values
            }
        rows.append(row)
    return rows


def _with_comparison(mine: list[dict[str, Any]], full: list[dict[str, Any]], label: str) -> dict[str, Any]:
    row = aggregate(mine)
    if full and label != "full":
        row["vs_full"] = paired_comparison(mine, full)
    return row
