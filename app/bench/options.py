"""Flags shared by the benchmark commands: lists, the cache tier, the model."""

from __future__ import annotations

import argparse

# The judge: the 0.5B instruction-tuned model answers the generated questions well enough with
# the full prompt for differences between methods to show (smollm2-135m-instruct is the fast one).
DEFAULT_MODEL = "qwen2.5-coder-0.5b-instruct"


def int_list(text: str) -> list[int]:
    """argparse type: comma-separated positive integers, e.g. 1000,2000,4000."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from error
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def ratio_list(text: str) -> list[float]:
    """argparse type: comma-separated ratios in (0, 1]."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from error
    if not values or any(not 0 < v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"every ratio must be in (0, 1], got {text!r}")
    return values


def fraction(text: str) -> float:
    """argparse type: a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from error
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


def method_list(text: str) -> list[str]:
    """argparse type: comma-separated names of the engine's methods."""
    from samkv import METHODS

    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise argparse.ArgumentTypeError(f"unknown method(s) {unknown}; expected some of {', '.join(METHODS)}")
    return methods


def add_cache_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the document caches are loaded from, and whether cold (as `samkv-rag bench`)."""
    parser.add_argument("--cache-tier", choices=("memory", "disk", "redis"), default="disk",
                        help="where document caches are loaded from (time to first token includes it)")
    state = parser.add_mutually_exclusive_group()
    state.add_argument("--cold", dest="cache_state", action="store_const", const="cold",
                       help="evict the disk tier's files from the page cache before every generation "
                            "(the default with --cache-tier disk)")
    state.add_argument("--warm", dest="cache_state", action="store_const", const="warm",
                       help="leave the disk tier's files in the page cache")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")


def resolve_cache_state(args: argparse.Namespace) -> str:
    """"cold" or "warm": the flag given, else cold for the disk tier. Raises ValueError for
    --cold on a tier whose reads cannot be made cold."""
    state = args.cache_state or ("cold" if args.cache_tier == "disk" else "warm")
    if state == "cold" and args.cache_tier != "disk":
        raise ValueError("--cold needs --cache-tier disk (only files can be evicted from the page cache)")
    return state


def add_model_arguments(parser: argparse.ArgumentParser, model: str = DEFAULT_MODEL) -> None:
    """The model to load: name or checkpoint, device and dtype."""
    parser.add_argument("--model", default=model,
                        help="model name (qwen2.5-coder-0.5b-instruct, smollm2-135m-instruct) or local checkpoint")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """The engine's settings a run may change: its weights, its probe's, and what a request keeps
    between passes."""
    from samkv.quantize import PROBE_WEIGHTS, WEIGHTS

    parser.add_argument("--weights", choices=WEIGHTS, default="float",
                        help="int8: int8 weight-only linear layers (SAMKV_WEIGHTS)")
    parser.add_argument("--probe-weights", choices=PROBE_WEIGHTS, default="model",
                        help="int8: probes run on int8 copies of the layers (SAMKV_PROBE_WEIGHTS)")
    parser.add_argument("--probe-hold-bytes", type=int, default=0,
                        help="stored KV bytes a request keeps from its probe for its assembly "
                             "(SAMKV_PROBE_HOLD_BYTES); 0, the default, keeps nothing")


def load_engine(args: argparse.Namespace, weights: str):
    """The self-checked engine of the model flags (add_model_arguments) with `weights`
    ("float" or "int8", samkv.quantize) and, where given, --probe-weights and --probe-hold-bytes."""
    from samkv import Engine
    from samkv.runtime import load_model

    loaded = load_model(args.model or None, device=args.device, dtype=args.dtype, weights=weights)
    return Engine(loaded, probe_hold_bytes=getattr(args, "probe_hold_bytes", 0),
                  probe_weights=getattr(args, "probe_weights", "model"))
