"""Paired comparisons of a configuration with `full` over the same questions (scipy.stats).

Every configuration answers the same questions, so the comparisons are paired: a bootstrap
confidence interval of the mean per-question difference (EM, F1), and McNemar's exact test on
the questions where exactly one of the two is exactly right (a binomial test of the discordant
pairs at p = 1/2).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
RESAMPLES = 9999
SEED = 0  # the resampling is seeded, so a report is reproducible from its records


def mean_difference_ci(method: Sequence[float], full: Sequence[float]) -> tuple[float, float, float]:
    """(mean of method − full, CI low, CI high): a paired percentile bootstrap of the mean difference."""
    x, y = np.asarray(method, dtype=float), np.asarray(full, dtype=float)
    if x.shape != y.shape or x.size == 0:
        raise ValueError(f"paired samples need equal, non-zero lengths, got {x.size} and {y.size}")
    difference = float(np.mean(x - y))
    if x.size == 1:
        return difference, float("nan"), float("nan")
    result = stats.bootstrap(
        (x, y), lambda a, b, axis: np.mean(a - b, axis=axis), paired=True, vectorized=True,
        confidence_level=CONFIDENCE, n_resamples=RESAMPLES, method="percentile", rng=np.random.default_rng(SEED),
    )
    return difference, float(result.confidence_interval.low), float(result.confidence_interval.high)


def mcnemar_exact(method: Sequence[float], full: Sequence[float]) -> dict[str, Any]:
    """McNemar's exact test on paired 0/1 outcomes: the discordant counts and the two-sided p."""
    better = sum(1 for m, f in zip(method, full, strict=True) if m and not f)
    worse = sum(1 for m, f in zip(method, full, strict=True) if f and not m)
    p = stats.binomtest(better, better + worse, 0.5).pvalue if better + worse else 1.0
    return {"better": better, "worse": worse, "p_value": float(p)}


def paired_comparison(method: list[dict[str, Any]], full: list[dict[str, Any]]) -> dict[str, Any]:
    """Differences to `full` (in percentage points) over records paired by question index."""
    by_question = {r["question_index"]: r for r in full}
    pairs = [(r, by_question[r["question_index"]]) for r in method if r["question_index"] in by_question]
    if not pairs:
        return {"questions": 0}
    out: dict[str, Any] = {"questions": len(pairs)}
    for metric in ("exact_match", "f1"):
        mean, low, high = mean_difference_ci([m[metric] for m, _ in pairs], [f[metric] for _, f in pairs])
        out[f"{metric}_diff"] = 100 * mean
        out[f"{metric}_diff_ci"] = [100 * low, 100 * high]
    out["exact_match_test"] = mcnemar_exact([m["exact_match"] for m, _ in pairs], [f["exact_match"] for _, f in pairs])
    return out
