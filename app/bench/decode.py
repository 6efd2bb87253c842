"""`samkv-rag bench-decode`: decoding speed and exact match of the weight settings, in one run.

Every setting's engine is loaded (and self-checked) side by side; speed rounds and questions
alternate between them, so a shared machine's load falls on all alike. Speed is the engine's
decoding tokens/s over a long answer to one document (every token after the first); exact match is over the
generated questions of the split, each setting answering the same question in turn.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from app.bench.command import ANSWER_PREFIX
from app.bench.machine import machine, machine_phrase
from app.bench.options import add_model_arguments, load_engine, method_list

# Asks for a long answer, so that decoding (not the prefill) is what the speed rounds time.
LONG_ANSWER_QUESTION = "Retell every document above in full detail, one sentence at a time."


def _weights_list(text: str) -> list[str]:
    from samkv.quantize import WEIGHTS

    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values or any(v not in WEIGHTS for v in values) or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"expected distinct settings among {', '.join(WEIGHTS)}, got {text!r}")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `samkv-rag bench-decode`."""
    parser.add_argument("--weights", type=_weights_list, default=_weights_list("float,int8"),
                        help="settings to compare, the first being the reference of the ratios")
    parser.add_argument("--rounds", type=int, default=5, help="speed rounds per setting (medians reported)")
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens decoded per speed round")
    parser.add_argument("--questions", type=int, default=20, help="generated questions for exact match (0: none)")
    parser.add_argument("--docs", type=int, default=4, help="documents per question")
    parser.add_argument("--doc-tokens", type=int, default=200, help="tokens per document")
    parser.add_argument("--split", choices=("dev", "test"), default="dev", help="the protocol's seed set")
    parser.add_argument("--seed", type=int, default=None, help="generator seed (default: the split's first)")
    parser.add_argument("--methods", type=method_list, default=method_list("full"),
                        help="methods answering the questions, at their default parameters")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--answer-prefix", default=ANSWER_PREFIX)
    add_model_arguments(parser)
    parser.add_argument("--out", type=Path, default=Path("decode-results"))


def _speed_rounds(engines: dict[str, Any], documents: dict[str, list], args: argparse.Namespace,
                  bar: tqdm) -> dict[str, list[float]]:
    """Decoding tokens/s of every setting per round; the order of the settings alternates."""
    speeds: dict[str, list[float]] = {weights: [] for weights in engines}
    for round_index in range(args.rounds):
        order = list(engines) if round_index % 2 == 0 else list(reversed(engines))
        for weights in order:
            out = engines[weights].generate(LONG_ANSWER_QUESTION, documents[weights], "full",
                                            max_new_tokens=args.new_tokens)
            speeds[weights].append(out.stats["tokens_per_s"])
            bar.update()
    return speeds


def run(args: argparse.Namespace, command_line: str | None = None) -> int:
    """Runs the comparison; prints it and writes decode.md and decode.json under --out.
    `command_line` is recorded as the run's command (default: this process's arguments)."""
    from app.bench.generator import QAGenerator
    from app.bench.protocol import resolve_seed
    from app.bench.runner import MethodConfig, run_questions

    try:
        split, seed = resolve_seed(args.split, args.seed)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    engines = {weights: load_engine(args, weights) for weights in args.weights}
    refused = {w: e.reuse_refusal for w, e in engines.items() if e.reuse_refusal}
    self_check = {weights: engine.self_check() for weights, engine in engines.items()}
    reference = next(iter(engines.values()))
    questions = QAGenerator(reference.count_tokens, seed=seed).questions(
        max(args.questions, 1), args.docs, args.doc_tokens)
    # One document: the speed rounds time decoding, not a long prefill before it.
    documents = {w: e.encode_documents(list(questions[0].documents[:1])) for w, e in engines.items()}
    configs = [MethodConfig(method, method, 1.0) for method in args.methods]  # each at its defaults
    bar = tqdm(total=len(engines) * (args.rounds + args.questions * len(configs)), desc="decode", unit="run")
    speeds = _speed_rounds(engines, documents, args, bar)
    records: list[dict[str, Any]] = []
    for index in range(args.questions):
        for weights, engine in engines.items():
            done = run_questions(engine, questions[: index + 1], configs, args.max_new_tokens,
                                 args.answer_prefix, on_step=lambda _: bar.update(), first_question=index)
            records += [{**record, "weights": weights} for record in done]
    bar.close()
    rows = _rows(engines, speeds, self_check, records)
    table = decode_table(rows)
    meta = {"command": command_line or "samkv-rag bench-decode " + shlex.join(sys.argv[2:]),
            "model": args.model, "device": str(reference.device), "machine": machine(), "dtype": str(reference.dtype),
            "rounds": args.rounds, "new_tokens": args.new_tokens, "questions": args.questions, "split": split,
            "seed": seed, "methods": args.methods, "refused": refused}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "decode.json").write_text(json.dumps({"meta": meta, "rows": rows, "speeds": speeds,
                                                      "records": records}, indent=1))
    (args.out / "decode.md").write_text(f"# Decoding: weight settings\n\n```\n{meta['command']}\n```\n\n"
                                        f"model {args.model}, device {meta['device']} ({machine_phrase(meta)}), dtype {meta['dtype']}; "
                                        f"{args.rounds} speed rounds of {args.new_tokens} tokens; "
                                        f"{args.questions} {split} questions (seed {seed})\n\n{table}\n")
    print(table)
    print(f"wrote {args.out / 'decode.md'}, {args.out / 'decode.json'}")
    return 1 if refused else 0


def _rows(engines: dict[str, Any], speeds: dict[str, list[float]], self_check: dict[str, float],
          records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per setting and method: speed (median of the rounds, ratio to the first setting),
    self-check difference, exact match and agreement of the answers with the first setting's."""
    first = next(iter(engines))
    reference_speed = statistics.median(speeds[first])
    answers = {(r["question_index"], r["label"]): r["answer"] for r in records if r["weights"] == first}
    rows = []
    for weights in engines:
        speed = statistics.median(speeds[weights])
        labels = dict.fromkeys(r["label"] for r in records if r["weights"] == weights) or {"–": None}
        for label in labels:
            mine = [r for r in records if r["weights"] == weights and r["label"] == label]
            rows.append({
                "weights": weights, "label": label, "self_check": self_check[weights],
                "tokens_per_s": speed, "speed_ratio": speed / reference_speed,
                "questions": len(mine),
                "exact_match": 100 * statistics.fmean(r["exact_match"] for r in mine) if mine else None,
                "agrees_with_first": 100 * statistics.fmean(
                    r["answer"] == answers[(r["question_index"], r["label"])] for r in mine) if mine else None,
                "ttft_ms_median": statistics.median(r["ttft_ms"] for r in mine) if mine else None,
            })
    return rows


def decode_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: per setting, self-check, decoding tokens/s and its ratio, exact match, agreement."""
    def cell(value: Any, fmt: str) -> str:
        return "–" if value is None else fmt.format(value)

    lines = [("| weights | method | self-check diff | decode tok/s p50 | × first | n | EM "
              "| same answer as first % | TTFT ms p50 |"), "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['weights']} | {row['label']} | {row['self_check']:.1e} | {row['tokens_per_s']:.2f} "
                     f"| {row['speed_ratio']:.2f} | {row['questions']} | {cell(row['exact_match'], '{:.1f}')} "
                     f"| {cell(row['agrees_with_first'], '{:.0f}')} | {cell(row['ttft_ms_median'], '{:.0f}')} |")
    return "\n".join(lines)
