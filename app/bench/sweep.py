"""`samkv-rag bench-sweep`: time to first token of every method against the context's length.

The same generated questions are padded with filler documents (no facts, never an answer) to
each length asked, so the evidence and its order stay those of the question; the padding is
seeded by the run's seed and the length.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any

from tqdm import tqdm

from app.bench.command import ALL_METHODS, ANSWER_PREFIX, store_source_factory
from app.bench.generator import QAGenerator, Question
from app.bench.machine import machine
from app.bench.options import (
    add_cache_arguments,
    add_engine_arguments,
    add_model_arguments,
    fraction,
    int_list,
    load_engine,
    method_list,
    ratio_list,
    resolve_cache_state,
)

DEFAULT_LENGTHS = "1000,2000,4000,8000"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `samkv-rag bench-sweep`."""
    parser.add_argument("--context-tokens", type=int_list, default=int_list(DEFAULT_LENGTHS),
                        help="context lengths to pad every question to, in tokens (lengths the model "
                             "cannot hold are skipped with a message)")
    parser.add_argument("--questions", type=int, default=4, help="number of generated questions")
    parser.add_argument("--docs", type=int, default=3, help="the question's own documents (evidence and distractors)")
    parser.add_argument("--doc-tokens", type=int, default=250, help="tokens per document, filler included")
    parser.add_argument("--two-hop-fraction", type=fraction, default=0.0, help="share of two-hop questions")
    parser.add_argument("--prose", action="store_true",
                        help="documents (filler included) of real news prose instead of template sentences")
    parser.add_argument("--split", choices=("dev", "test"), help="the protocol's seed set (docs/PROTOCOL.md)")
    parser.add_argument("--seed", type=int, default=None,
                        help="generator seed (default: the split's first seed, or 0 without --split)")
    parser.add_argument("--methods", type=method_list, default=method_list(ALL_METHODS))
    parser.add_argument("--keep-ratios", type=ratio_list, default=[0.15], help="e.g. 0.05,0.15")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--answer-prefix", default=ANSWER_PREFIX)
    add_cache_arguments(parser)
    add_model_arguments(parser)
    add_engine_arguments(parser)
    parser.add_argument("--out", type=Path, default=Path("sweep-results"))


def padding_seed(seed: int, length: int) -> int:
    """The padding generator's seed for one length: the same run pads the same way, and each
    length independently of which others are asked."""
    return seed * 1_000_003 + length


def positions_needed(engine, item: Question, answer_prefix: str, max_new_tokens: int) -> int:
    """Positions the engine needs for `item`: prefix, stored documents, question, generation."""
    prompt = engine.prompt
    documents = sum(int(prompt.document(text).numel()) for text in item.documents)
    question = int(prompt.question(item.question, answer_prefix).numel())
    generation = max(max_new_tokens, int(prompt.answer(item.answers[0]).numel()))
    return engine.prefix_len + documents + question + generation


def padded_questions(engine, base: list[Question], lengths: list[int], args: argparse.Namespace,
                     seed: int, prose) -> tuple[dict[int, list[Question]], list[str]]:
    """The questions padded to each length the model can hold, and a message per length skipped."""
    plan: dict[int, list[Question]] = {}
    skipped: list[str] = []
    for length in lengths:
        padder = QAGenerator(engine.count_tokens, seed=padding_seed(seed, length), prose=prose)
        questions = [padder.padded(item, length, args.doc_tokens) for item in base]
        needed = max(positions_needed(engine, item, args.answer_prefix, args.max_new_tokens) for item in questions)
        if needed > engine.max_context:
            skipped.append(f"{length} context tokens: {args.model} holds {engine.max_context} positions "
                           f"(max_position_embeddings), these questions need up to {needed}")
            continue
        plan[length] = questions
    return plan, skipped


def run(args: argparse.Namespace, command_line: str | None = None) -> int:
    """Runs the sweep and writes sweep.md, sweep.json, records.jsonl and sweep.png under --out.
    `command_line` is recorded as the run's command (default: this process's arguments)."""
    from app.bench.prose import ProseCorpus
    from app.bench.protocol import resolve_seed
    from app.bench.runner import method_configs, run_questions
    from app.bench.sweep_report import ratio_lines, sweep_rows, sweep_table, write_sweep

    lengths = sorted(set(args.context_tokens))
    try:
        split, seed = resolve_seed(args.split, args.seed)
        cache_state = resolve_cache_state(args)
        if args.docs * args.doc_tokens > lengths[0]:
            raise ValueError(f"the question's own {args.docs} documents of ~{args.doc_tokens} tokens exceed the "
                             f"shortest length asked ({lengths[0]}); lower --docs or --doc-tokens")
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    engine = load_engine(args, args.weights)
    prose = ProseCorpus.load() if args.prose else None
    base = QAGenerator(engine.count_tokens, seed=seed, prose=prose).questions(
        args.questions, args.docs, args.doc_tokens, args.two_hop_fraction)
    plan, skipped = padded_questions(engine, base, lengths, args, seed, prose)
    for line in skipped:
        print(f"skipping {line}", file=sys.stderr)
    if not plan:
        print("error: no context length asked fits the model", file=sys.stderr)
        return 2
    configs = method_configs(args.methods, args.keep_ratios, ablations=())
    records: list[dict[str, Any]] = []
    bar = tqdm(total=sum(len(q) for q in plan.values()) * len(configs), desc="sweep", unit="run")
    for length, questions in plan.items():
        # One store per length, deleted with its caches before the next, longer one.
        with tempfile.TemporaryDirectory(prefix="samkv-sweep-") as scratch:
            put, source, store = store_source_factory(args.cache_tier, engine, Path(scratch), args.redis_url)
            try:
                done = run_questions(engine, questions, configs, args.max_new_tokens, args.answer_prefix,
                                     source_factory=source, on_encoded=put, on_step=lambda _: bar.update(),
                                     before_generate=store.drop_page_cache if cache_state == "cold" else None)
            finally:
                store.close()
        records += [{**record, "context_target": length} for record in done]
    bar.close()
    rows = sweep_rows(records, configs)
    meta = {
        "command": command_line or "samkv-rag bench-sweep " + shlex.join(sys.argv[2:]),
        "context_tokens": list(plan), "skipped": skipped, "questions": len(base), "docs": args.docs,
        "doc_tokens": args.doc_tokens, "model": args.model, "weights": args.weights, "probe_weights": args.probe_weights, "device": str(engine.device),
        "machine": machine(),
        "dtype": str(engine.dtype), "cache_tier": args.cache_tier, "cache_state": cache_state, "split": split,
        "seed": seed, "max_new_tokens": args.max_new_tokens, "prose": args.prose,
    }
    files = write_sweep(args.out, rows, records, meta)
    print(sweep_table(rows))
    print("\n".join(ratio_lines(rows)))
    print("wrote " + ", ".join(str(f) for f in files))
    return 0
