"""`samkv-rag bench-compare`: configurations of different runs, paired on the questions they share.

A run folder's records.jsonl holds one record per (question, configuration); two runs over the
same seeds and generator flags ask the same questions, so a configuration run later (a new
default, an ablation, int8 weights) is compared with one of an earlier run question by question,
with the same paired statistics as a single run's report (app.bench.stats).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.bench.stats import paired_comparison

KINDS = ("single", "two-hop")
# What decides a run's questions: the generator spreads kinds and variants over the planned
# count, so runs that differ in any of these ask different questions under the same indices.
QUESTION_KEYS = ("model", "split", "seed", "questions_planned", "docs", "doc_tokens", "two_hop_fraction",
                 "prose", "confuser_fraction", "indirect_bridge_fraction")


@dataclass(frozen=True)
class RunConfig:
    """One configuration (its label) of one run folder, its records and what decided its questions."""

    name: str
    records: list[dict[str, Any]]
    questions: dict[str, Any]


def parse_run_config(text: str) -> RunConfig:
    """`FOLDER:LABEL` (e.g. docs/benchmarks/test-q150:full) with that label's records."""
    folder, _, label = text.rpartition(":")
    if not folder or not label:
        raise argparse.ArgumentTypeError(f"expected FOLDER:LABEL, got {text!r}")
    path = Path(folder) / "records.jsonl"
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no records.jsonl in {folder}")
    with path.open() as handle:
        records = [record for line in handle if (record := json.loads(line))["label"] == label]
    if not records:
        raise argparse.ArgumentTypeError(f"{folder} has no records labelled {label!r}")
    results = Path(folder) / "results.json"
    meta = json.loads(results.read_text())["meta"] if results.is_file() else {}
    return RunConfig(f"{Path(folder).name}:{label}", records, {key: meta.get(key) for key in QUESTION_KEYS})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("reference", type=parse_run_config, help="FOLDER:LABEL every other is compared with")
    parser.add_argument("others", type=parse_run_config, nargs="+", help="FOLDER:LABEL to compare")
    parser.add_argument("--out", type=Path, help="also write the table (Markdown) to this file")


def _paired(records: list[dict[str, Any]], reference: list[dict[str, Any]]) -> tuple[list, list]:
    by_question = {r["question_index"]: r for r in reference}
    shared = [r for r in records if r["question_index"] in by_question]
    return shared, [by_question[r["question_index"]] for r in shared]


def _em_difference(compared: dict[str, Any], questions: int) -> str:
    """ΔEM [95% CI] of a paired comparison; "–" for fewer than two questions."""
    if questions < 2:
        return "–"
    low, high = compared["exact_match_diff_ci"]
    return f"{compared['exact_match_diff']:+.1f} [{low:+.1f}, {high:+.1f}]"


def _kind_difference(records: list[dict[str, Any]], reference: list[dict[str, Any]]) -> str:
    return _em_difference(paired_comparison(records, reference), len(records)) if records else "–"


def comparison_rows(reference: RunConfig, others: list[RunConfig]) -> list[str]:
    """The Markdown table: each configuration against the reference on the questions both answered."""
    header = ("| configuration | questions | EM | reference EM | ΔEM [95% CI] | ΔF1 [95% CI] | better / worse | "
              "exact p | identical answers % | " + " | ".join(f"ΔEM {kind}" for kind in KINDS) + " | TTFT p50 ms |")
    lines = [f"Reference: `{reference.name}`", "", header, "|" + "---|" * (10 + len(KINDS))]
    for other in others:
        records, paired = _paired(other.records, reference.records)
        if not records:
            lines.append(f"| {other.name} | 0 | – | – | – | – | – | – | – | " + "– | " * len(KINDS) + "– |")
            continue
        compared = paired_comparison(records, paired)
        test = compared["exact_match_test"]
        f1_low, f1_high = compared["f1_diff_ci"]
        identical = 100 * statistics.fmean(float(r["answer"] == p["answer"]) for r, p in zip(records, paired))
        by_kind = [_kind_difference([r for r in records if r["kind"] == kind], paired) for kind in KINDS]
        lines.append(
            f"| {other.name} | {len(records)} | {100 * statistics.fmean(r['exact_match'] for r in records):.1f} | "
            f"{100 * statistics.fmean(p['exact_match'] for p in paired):.1f} | {_em_difference(compared, len(records))} | "
            f"{compared['f1_diff']:+.1f} [{f1_low:+.1f}, {f1_high:+.1f}] | {test['better']} / {test['worse']} | "
            f"{test['p_value']:.3f} | {identical:.1f} | " + " | ".join(by_kind)
            + f" | {statistics.median(r['ttft_ms'] for r in records):.0f} |"
        )
    return lines


def run(args: argparse.Namespace) -> int:
    """Prints (and with --out writes) the comparison table; refuses runs with other questions."""
    for other in args.others:
        differing = [key for key in QUESTION_KEYS if other.questions[key] != args.reference.questions[key]]
        if differing:
            shown = ", ".join(f"{key} {args.reference.questions[key]!r} against {other.questions[key]!r}"
                              for key in differing)
            print(f"error: {other.name} asked other questions than {args.reference.name} ({shown})",
                  file=sys.stderr)
            return 2
    table = "\n".join(comparison_rows(args.reference, args.others)) + "\n"
    print(table, end="")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table, encoding="utf-8")
    return 0
