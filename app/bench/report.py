"""Writing a benchmark run: results.json, Markdown tables (overall, against `full` with CIs, stage
times, and split by question kind and variant), and the plots."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt

from app.bench.machine import machine_phrase

COLUMNS = [
    ("label", "method", "{}"), ("questions", "n", "{}"), ("exact_match", "EM", "{:.1f}"), ("contains_match", "contains", "{:.1f}"),
    ("f1", "F1", "{:.1f}"), ("answer_logprob", "logprob", "{:.3f}"), ("agreement_with_full", "agree", "{:.1f}"),
    ("answer_kept", "answer kept", "{:.1f}"), ("hit_limit", "hit limit %", "{:.1f}"),
    ("ttft_ms_median", "TTFT ms p50", "{:.0f}"), ("ttft_ms_p90", "TTFT ms p90", "{:.0f}"),
    ("ttft_share_of_full", "TTFT / full", "{:.2f}"), ("kv_decode_share_of_full", "KV decode / full", "{:.2f}"),
    ("kv_peak_share_of_full", "KV peak / full", "{:.2f}"), ("decode_tokens_per_s", "tok/s", "{:.1f}"),
    ("recomputed_tokens", "recomputed", "{:.0f}"), ("kept_tokens", "kept", "{:.0f}"),
]


# Stage times in the order a request passes through them; other `*_ms` keys follow by name.
# "prefill_ms" is in records from before the question was assembled with the context (samkv.assembly).
STAGES = ("open_ms", "load_ms", "probe_ms", "select_ms", "assemble_ms", "prefill_ms", "ttft_ms", "total_ms")


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Time to first token and KV bytes of each row as a share of `full`'s, measured in the same run."""
    full = next((r for r in rows if r["label"] == "full"), None)
    if full is None:
        return
    for row in rows:
        _shares(row, full)
        for group in ("kind", "variant"):
            for value, part in row.get(f"by_{group}", {}).items():
                if value in full.get(f"by_{group}", {}):
                    _shares(part, full[f"by_{group}"][value])


def _shares(row: dict[str, Any], full: dict[str, Any]) -> None:
    row["ttft_share_of_full"] = row["ttft_ms_median"] / full["ttft_ms_median"]
    row["kv_decode_share_of_full"] = row["kv_bytes_decode"] / full["kv_bytes_decode"]
    row["kv_peak_share_of_full"] = row["kv_bytes_peak"] / full["kv_bytes_peak"]


def _cell(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return fmt.format(value)


def _part(row: dict[str, Any], group: str | None, value: str | None) -> dict[str, Any] | None:
    """The row itself, or its split for one value of a group (None when it has none)."""
    if group is None:
        return row
    part = row.get(f"by_{group}", {}).get(value)
    return None if part is None else {**part, "label": row["label"]}


def markdown_table(rows: list[dict[str, Any]], group: str | None = None, value: str | None = None) -> str:
    """The metrics table, over all questions or over those whose `group` field is `value`."""
    lines = ["| " + " | ".join(title for _, title, _ in COLUMNS) + " |",
             "|" + "|".join("---" for _ in COLUMNS) + "|"]
    for row in rows:
        data = _part(row, group, value)
        if data is not None:
            lines.append("| " + " | ".join(_cell(data.get(key), fmt) for key, _, fmt in COLUMNS) + " |")
    return "\n".join(lines)


def _interval(comparison: dict[str, Any], metric: str) -> str:
    low, high = comparison[f"{metric}_diff_ci"]
    if math.isnan(low):
        return f"{comparison[f'{metric}_diff']:+.1f}"
    return f"{comparison[f'{metric}_diff']:+.1f} [{low:+.1f}, {high:+.1f}]"


def comparison_table(rows: list[dict[str, Any]], group: str | None = None, value: str | None = None) -> str:
    """Each configuration against `full` on the same questions: mean differences in points with
    paired 95% bootstrap CIs, and McNemar's exact test on exact match."""
    lines = ["| method | questions | ΔEM [95% CI] | ΔF1 [95% CI] | EM better / worse | exact p |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        data = _part(row, group, value)
        comparison = (data or {}).get("vs_full")
        if not comparison or not comparison.get("questions"):
            continue
        test = comparison["exact_match_test"]
        lines.append(f"| {row['label']} | {comparison['questions']} | {_interval(comparison, 'exact_match')} "
                     f"| {_interval(comparison, 'f1')} | {test['better']} / {test['worse']} | {test['p_value']:.3g} |")
    return "\n".join(lines)


def stage_table(rows: list[dict[str, Any]]) -> str:
    """The median of every recorded stage time (ms) per configuration."""
    found = {key for row in rows for key in row.get("stage_ms_median", {})}
    keys = sorted(found, key=lambda key: (STAGES.index(key) if key in STAGES else len(STAGES), key))
    lines = ["| method | " + " | ".join(key.removesuffix("_ms") for key in keys) + " |",
             "|" + "|".join("---" for _ in range(len(keys) + 1)) + "|"]
    for row in rows:
        stages = row.get("stage_ms_median", {})
        lines.append(f"| {row['label']} | " + " | ".join(_cell(stages.get(key), "{:.0f}") for key in keys) + " |")
    return "\n".join(lines)


def weights_phrase(meta: dict[str, Any]) -> str:
    """The weights a run's engine ran on, as its report's setup line says them."""
    return f"{meta.get('weights', 'float')} weights, probes on {meta.get('probe_weights', 'model')} weights"


def write_report(out: Path, rows: list[dict[str, Any]], records: list[dict[str, Any]], meta: dict[str, Any]) -> list[Path]:
    """Writes results.json, results.md, records.jsonl and the PNG plots; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    add_ratios(rows)
    (out / "results.json").write_text(json.dumps({"meta": meta, "results": rows}, indent=2))
    with (out / "records.jsonl").open("w") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
    setup = (
        f"{meta.get('questions')} questions ({meta.get('split', 'scratch')} split, seed {meta.get('seed')}), "
        f"{meta.get('docs')} documents each, ~{meta.get('doc_tokens')} tokens per document; model "
        f"{meta.get('model')} ({weights_phrase(meta)}), device {meta.get('device')} ({machine_phrase(meta)}), "
        f"dtype {meta.get('dtype')}, "
        "caches loaded from the "
        f"{meta.get('cache_tier')} tier ({meta.get('cache_state')}); answers cut after their first sentence, "
        f"at most {meta.get('max_new_tokens')} new tokens.\n"
    )
    if meta.get("questions_planned", meta.get("questions")) != meta.get("questions"):
        setup += (f"\n**Interrupted: {meta.get('questions')} of the {meta.get('questions_planned')} "
                  "questions planned** (the same command with `--resume` goes on).\n")
    parts = [f"# Benchmark results\n\n```\n{meta.get('command', '')}\n```\n", setup, markdown_table(rows),
             "\n## Against full (paired, percentage points)\n", comparison_table(rows),
             "\n## Stage times (ms, median)\n", stage_table(rows)]
    for group in ("kind", "variant"):
        values = sorted({value for row in rows for value in row.get(f"by_{group}", {})})
        for value in values:
            parts += [f"\n## {group}: {value}\n", markdown_table(rows, group, value), "",
                      comparison_table(rows, group, value)]
    (out / "results.md").write_text("\n".join(parts) + "\n")
    return [out / "results.json", out / "results.md", *_plots(out, rows)]


def _plots(out: Path, rows: list[dict[str, Any]]) -> list[Path]:
    files = []
    methods = sorted({r["method"] for r in rows})

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method in methods:
        mine = sorted((r for r in rows if r["method"] == method and "[" not in r["label"]), key=lambda r: r["keep_ratio"])
        if mine:
            ax.plot([r["keep_ratio"] for r in mine], [r["f1"] for r in mine], marker="o", label=method)
    ax.set(xlabel="keep ratio (recompute ratio for cacheblend)", ylabel="F1", title="Quality against keep ratio")
    ax.legend()
    files.append(_save(fig, out / "quality_vs_keep_ratio.png"))

    for key, title, name in (("ttft_ms_median", "Time to first token (ms, median)", "ttft.png"),
                             ("kv_bytes_decode", "Decoding KV cache (MiB)", "kv_bytes.png")):
        fig, ax = plt.subplots(figsize=(9, 4.5))
        scale = 1 / 2**20 if key == "kv_bytes_decode" else 1
        ax.bar([r["label"] for r in rows], [r[key] * scale for r in rows], color="tab:blue")
        ax.set(title=title)
        ax.tick_params(axis="x", rotation=60, labelsize=7)
        files.append(_save(fig, out / name))

    if any("ttft_share_of_full" in r for r in rows):
        fig, ax = plt.subplots(figsize=(7, 5))
        largest = max(r["kv_bytes_decode"] for r in rows)
        for r in rows:
            ax.scatter(r["ttft_share_of_full"], r["f1"], s=30 + 600 * r["kv_bytes_decode"] / largest, alpha=0.6)
            ax.annotate(r["label"], (r["ttft_share_of_full"], r["f1"]), fontsize=7)
        ax.set(xlabel="time to first token / full", ylabel="F1",
               title="Quality vs time to first token (marker area: decoding KV bytes)")
        files.append(_save(fig, out / "summary.png"))
    return files


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
