"""Writing a context-length sweep: one row per method and length, with time to first token, its
share of `full`'s at the same length, and the median of every stage; sweep.md, sweep.json,
records.jsonl and sweep.png."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt

from app.bench.machine import machine_phrase
from app.bench.report import STAGES, add_ratios, weights_phrase
from app.bench.runner import MethodConfig
from app.bench.summary import summarise

# The stages before the first token, in the order a request passes them (the table's columns).
SWEEP_STAGES = tuple(s for s in STAGES if s not in ("ttft_ms", "total_ms"))
_KEPT = ("label", "method", "keep_ratio", "questions", "exact_match", "f1", "agreement_with_full",
         "ttft_ms_median", "ttft_ms_p90", "ttft_share_of_full", "decode_tokens_per_s", "context_tokens",
         "recomputed_tokens", "kept_tokens", "stage_ms_median")


def sweep_rows(records: list[dict[str, Any]], configs: Sequence[MethodConfig]) -> list[dict[str, Any]]:
    """One row per (context length asked, configuration), lengths ascending, `full` first."""
    rows: list[dict[str, Any]] = []
    for target in sorted({r["context_target"] for r in records}):
        summary = summarise([r for r in records if r["context_target"] == target], configs)
        add_ratios(summary)
        rows += [{"context_target": target, **{key: row.get(key) for key in _KEPT}} for row in summary]
    return rows


def _cell(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return fmt.format(value)


def sweep_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: per length and method, quality, time to first token and its stages (ms, median)."""
    # Only the stages the records hold: earlier runs timed the question's prefill on its own.
    present = [s for s in SWEEP_STAGES if any(s in (row.get("stage_ms_median") or {}) for row in rows)]
    stages = [s.removesuffix("_ms") for s in present]
    lines = ["| context asked | context tokens | method | n | EM | TTFT ms p50 | TTFT / full | "
             + " | ".join(stages) + " |",
             "|" + "|".join("---" for _ in range(7 + len(stages))) + "|"]
    for row in rows:
        stage_ms = row.get("stage_ms_median") or {}
        cells = [str(row["context_target"]), _cell(row["context_tokens"], "{:.0f}"), row["label"],
                 str(row["questions"]), _cell(row["exact_match"], "{:.1f}"), _cell(row["ttft_ms_median"], "{:.0f}"),
                 _cell(row.get("ttft_share_of_full"), "{:.2f}")]
        cells += [_cell(stage_ms.get(stage), "{:.0f}") for stage in present]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ratio_lines(rows: list[dict[str, Any]]) -> list[str]:
    """One line per length: every configuration's time to first token as a share of `full`'s."""
    lines = []
    for target in sorted({r["context_target"] for r in rows}):
        mine = [r for r in rows if r["context_target"] == target and r.get("ttft_share_of_full") is not None]
        shares = ", ".join(f"{r['label']} {r['ttft_share_of_full']:.2f}×" for r in mine if r["label"] != "full")
        lines.append(f"{target} tokens: TTFT / full: {shares or '– (no full row)'}")
    return lines


def write_sweep(out: Path, rows: list[dict[str, Any]], records: list[dict[str, Any]],
                meta: dict[str, Any]) -> list[Path]:
    """Writes sweep.json, sweep.md, records.jsonl and sweep.png under `out`; returns them."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    with (out / "records.jsonl").open("w") as handle:
        handle.writelines(json.dumps(record) + "\n" for record in records)
    setup = (f"{meta['questions']} questions ({meta['split']} split, seed {meta['seed']}), each padded with "
             f"filler documents of ~{meta['doc_tokens']} tokens to every context length asked; model "
             f"{meta['model']} ({weights_phrase(meta)}), device {meta['device']} ({machine_phrase(meta)}), "
             f"dtype {meta['dtype']}, "
             f"caches loaded from the {meta['cache_tier']} tier ({meta['cache_state']}). Stage times are "
             "medians (ms); TTFT includes opening the caches (open).")
    skipped = "".join(f"\n\nSkipped: {line}" for line in meta.get("skipped", []))
    text = (f"# Context-length sweep\n\n```\n{meta['command']}\n```\n\n{setup}{skipped}\n\n"
            + sweep_table(rows) + "\n\n" + "\n".join(f"- {line}" for line in ratio_lines(rows)) + "\n")
    (out / "sweep.md").write_text(text)
    return [out / "sweep.json", out / "sweep.md", out / "records.jsonl", _plot(out / "sweep.png", rows)]


def _plot(path: Path, rows: list[dict[str, Any]]) -> Path:
    fig, (absolute, share) = plt.subplots(1, 2, figsize=(12, 4.5))
    for index, label in enumerate(dict.fromkeys(r["label"] for r in rows)):
        mine = [r for r in rows if r["label"] == label]
        lengths = [r["context_target"] for r in mine]
        style = {"marker": "o", "label": label, "color": f"C{index % 10}"}  # one colour per method in both
        absolute.plot(lengths, [r["ttft_ms_median"] for r in mine], **style)
        if label != "full" and all(r.get("ttft_share_of_full") is not None for r in mine):
            share.plot(lengths, [r["ttft_share_of_full"] for r in mine], **style)
    for axis in (absolute, share):
        axis.set_xscale("log", base=2)
        axis.set_xticks(sorted({r["context_target"] for r in rows}), labels=None)
        axis.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        axis.set_xlabel("context tokens asked")
        axis.legend(fontsize=7)
    absolute.set(yscale="log", ylabel="ms (median)", title="Time to first token")
    share.set(ylabel="share of full's", title="Time to first token / full, same length")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
