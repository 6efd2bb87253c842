"""The benchmark commands of the CLI (`bench`, `bench-store`, `bench-load`): their flags and runs."""

from __future__ import annotations

import argparse


def run_command(command: str, argv: list[str]) -> int:
    """Parses `argv` for `command` (bench, bench-store or bench-load) and runs it; returns the exit code."""
    from app.bench import command as bench

    parser = argparse.ArgumentParser(prog=f"samkv-rag {command}")
    if command == "bench":
        bench.add_arguments(parser)
        return bench.run(parser.parse_args(argv)) or 0
    if command == "bench-load":
        from app.bench import load

        load.add_arguments(parser)
        return load.run(parser.parse_args(argv))
    bench.add_store_arguments(parser)
    return bench.run_store(parser.parse_args(argv)) or 0
