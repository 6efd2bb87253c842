"""The benchmark commands of the CLI: their names, and the dispatch to their flags and runs."""

from __future__ import annotations

import argparse
import shlex

# Each command parses its own flags (`samkv-rag <command> --help`).
COMMANDS = {
    "bench": "answer-quality and latency benchmark",
    "bench-sweep": "time to first token of every method against the context's length",
    "bench-decode": "decoding speed and exact match of float against int8 weights",
    "bench-store": "KV store benchmark",
    "bench-load": "service throughput under concurrent clients",
    "bench-compare": "configurations of different runs, paired on the questions they share",
}


def run_command(command: str, argv: list[str]) -> int:
    """Parses `argv` for `command` (one of COMMANDS) and runs it; returns the exit code."""
    from app.bench import command as bench

    parser = argparse.ArgumentParser(prog=f"samkv-rag {command}", description=COMMANDS[command])
    if command == "bench":
        bench.add_arguments(parser)
        return bench.run(parser.parse_args(argv)) or 0
    if command == "bench-sweep":
        from app.bench import sweep

        sweep.add_arguments(parser)
        return sweep.run(parser.parse_args(argv), f"samkv-rag {command} {shlex.join(argv)}")
    if command == "bench-decode":
        from app.bench import decode

        decode.add_arguments(parser)
        return decode.run(parser.parse_args(argv), f"samkv-rag {command} {shlex.join(argv)}")
    if command == "bench-compare":
        from app.bench import compare

        compare.add_arguments(parser)
        return compare.run(parser.parse_args(argv))
    if command == "bench-load":
        from app.bench import load

        load.add_arguments(parser)
        return load.run(parser.parse_args(argv))
    bench.add_store_arguments(parser)
    return bench.run_store(parser.parse_args(argv)) or 0
