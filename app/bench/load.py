"""`samkv-rag bench-load`: questions per minute and time to first token through the HTTP API.

Concurrent clients ask generated questions over a collection ingested through the API, one
method at a time, so the cost of an answer under load is measured end to end: retrieval, cache
loads, the method, decoding, streaming. Each client asks its questions one after another; a 503
(the server's back-pressure) is retried after its Retry-After and counted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from app.bench.machine import machine, machine_phrase

READY_TIMEOUT_S = 900
MAX_RETRIES = 20


@dataclass
class Answer:
    """One question's fate under load."""

    method: str
    clients: int
    ok: bool
    ttft_s: float | None
    total_s: float
    rejected: int  # 503s before it was served
    error: str = ""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `samkv-rag bench-load`."""
    parser.add_argument("--url", help="a running server; without it one is started on a scratch data dir")
    parser.add_argument("--api-key", default=os.environ.get("SAMKV_API_KEY"))
    parser.add_argument("--model", default="qwen2.5-coder-0.5b-instruct",
                        help="model of the server this command starts")
    parser.add_argument("--clients", default="1,4,8", help="concurrent client counts, e.g. 1,4,8")
    parser.add_argument("--methods", default="full,samkv")
    parser.add_argument("--questions-per-client", type=int, default=2)
    parser.add_argument("--collection", type=int, default=8,
                        help="generated questions whose documents are ingested (8 documents each)")
    parser.add_argument("--doc-tokens", type=int, default=300)
    parser.add_argument("--top-k", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--seed", type=int, default=100, help="generator seed (a dev seed by default)")
    parser.add_argument("--out", type=Path, default=Path("bench-results/load"))


def _int_list(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise SystemExit(f"error: expected positive comma-separated counts, got {text!r}")
    return values


def ask(client: httpx.Client, body: dict[str, Any], clients: int) -> Answer:
    """Streams one answer; time to first token is the first `token` event after the request."""
    rejected = 0
    started = time.perf_counter()
    for _ in range(MAX_RETRIES):
        ttft = None
        with client.stream("POST", "/v1/query", json={**body, "stream": True}) as response:
            if response.status_code == 503:
                rejected += 1
                time.sleep(float(response.headers.get("Retry-After", "1")))
                continue
            if response.status_code != 200:
                response.read()
                return Answer(body["method"], clients, False, None, time.perf_counter() - started,
                              rejected, f"HTTP {response.status_code}: {response.text[:200]}")
            event = ""
            for line in response.iter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                    if event == "token" and ttft is None:
                        ttft = time.perf_counter() - started
                elif line.startswith("data: ") and event == "error":
                    return Answer(body["method"], clients, False, ttft, time.perf_counter() - started,
                                  rejected, line[6:200])
                elif line.startswith("data: ") and event == "done":
                    return Answer(body["method"], clients, True, ttft, time.perf_counter() - started, rejected)
        return Answer(body["method"], clients, False, ttft, time.perf_counter() - started, rejected,
                      "the stream ended without a done event")
    return Answer(body["method"], clients, False, None, time.perf_counter() - started, rejected,
                  f"still refused after {MAX_RETRIES} tries")


def run_level(url: str, headers: dict[str, str], questions: list[str], method: str, clients: int,
              per_client: int, options: dict[str, Any]) -> tuple[list[Answer], float]:
    """`clients` concurrent clients each ask `per_client` questions; returns the answers and the wall time."""

    def client_loop(index: int) -> list[Answer]:
        with httpx.Client(base_url=url, headers=headers, timeout=600) as client:
            return [
                ask(client, {"question": questions[(index * per_client + j) % len(questions)],
                             "method": method, **options}, clients)
                for j in range(per_client)
            ]

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        answers = [a for batch in pool.map(client_loop, range(clients)) for a in batch]
    return answers, time.perf_counter() - started


def summarise(answers: list[Answer], wall_s: float) -> dict[str, Any]:
    """Questions per minute, time-to-first-token percentiles, failures and rejections of one level."""
    ttfts = [a.ttft_s for a in answers if a.ok and a.ttft_s is not None]
    served = sum(a.ok for a in answers)
    out: dict[str, Any] = {
        "questions": len(answers), "answered": served, "failed": len(answers) - served,
        "rejected_503": sum(a.rejected for a in answers), "wall_s": wall_s,
        "questions_per_minute": 60 * served / wall_s if wall_s > 0 else 0.0,
    }
    for p in (50, 90, 99):
        out[f"ttft_p{p}_s"] = float(np.percentile(ttfts, p)) if ttfts else None
    return out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def started_server(model: str, data_dir: Path) -> Iterator[str]:
    """`samkv-rag serve` (its default settings otherwise) on a free loopback port and a scratch
    data dir, until the block ends."""
    port = _free_port()
    env = {**os.environ, "SAMKV_MODEL": model, "SAMKV_DATA_DIR": str(data_dir), "SAMKV_PORT": str(port),
           "SAMKV_HOST": "127.0.0.1", "SAMKV_API_KEYS": ""}
    log = (data_dir / "server.log").open("w")
    process = subprocess.Popen([sys.executable, "-m", "app.cli", "serve"], env=env, stdout=log,
                               stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise SystemExit(f"error: the server exited with {process.returncode}; see {log.name}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            time.sleep(1)
        else:
            raise SystemExit(f"error: the server was not ready after {READY_TIMEOUT_S} s; see {log.name}")
        yield url
    finally:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=30)
        if process.poll() is None:
            process.kill()
        log.close()


def _collection(args: argparse.Namespace) -> tuple[list[str], list[dict[str, str]]]:
    """Generated questions and their documents (each question's 8 documents, ids unique)."""
    from app.bench.generator import QAGenerator
    from samkv import load_tokenizer

    tokenizer = load_tokenizer(args.model)
    generator = QAGenerator(lambda text: len(tokenizer(text, add_special_tokens=False).input_ids),
                            seed=args.seed)
    questions, documents = [], []
    for i in range(args.collection):
        item = generator.single(8, args.doc_tokens)
        questions.append(item.question)
        documents += [{"id": f"load-{i}-{j}", "text": text} for j, text in enumerate(item.documents)]
    return questions, documents


def _measure(url: str, args: argparse.Namespace, questions: list[str],
             documents: list[dict[str, str]]) -> list[dict[str, Any]]:
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    with httpx.Client(base_url=url, headers=headers, timeout=None) as client:
        for start in range(0, len(documents), 16):
            response = client.post("/v1/documents", params={"wait": "true"},
                                   json={"documents": documents[start:start + 16]})
            response.raise_for_status()
            print(f"ingested {min(start + 16, len(documents))}/{len(documents)} documents", flush=True)
    options = {"top_k": args.top_k, "max_new_tokens": args.max_new_tokens}
    rows = []
    for clients in _int_list(args.clients):
        for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
            answers, wall = run_level(url, headers, questions, method, clients, args.questions_per_client, options)
            row = {"method": method, "clients": clients, **summarise(answers, wall),
                   "errors": sorted({a.error for a in answers if a.error})}
            rows.append(row)
            print(_format_row(row), flush=True)
    return rows


def _format_row(row: dict[str, Any]) -> str:
    p50 = row["ttft_p50_s"]
    return (f"{row['method']:>8} × {row['clients']} clients: {row['questions_per_minute']:6.2f} questions/min, "
            f"TTFT p50 {p50 if p50 is None else round(p50, 2)} s, failed {row['failed']}, "
            f"503s {row['rejected_503']}")


def ratios(rows: list[dict[str, Any]], baseline: str = "full") -> list[dict[str, Any]]:
    """Each method's questions per minute over the baseline's at the same client count."""
    base = {r["clients"]: r["questions_per_minute"] for r in rows if r["method"] == baseline}
    return [
        {"method": r["method"], "clients": r["clients"],
         "throughput_vs_" + baseline: r["questions_per_minute"] / base[r["clients"]]}
        for r in rows if r["method"] != baseline and base.get(r["clients"])
    ]


def _seconds(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f} s"


def report(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """results.md of a load run."""
    lines = ["# Service throughput", "", f"`{meta['command']}`", "",
             (f"Model {meta.get('model')}, {meta.get('documents')} documents, generation slots: "
              f"{meta.get('max_concurrent_generations', 'not recorded')}, {meta.get('cpu_count')} CPUs; "
              f"{machine_phrase(meta)}."), "",
             "| method | clients | questions/min | TTFT p50 | TTFT p90 | TTFT p99 | failed | 503s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['clients']} | {r['questions_per_minute']:.2f} | {_seconds(r['ttft_p50_s'])} | "
                     f"{_seconds(r['ttft_p90_s'])} | {_seconds(r['ttft_p99_s'])} | {r['failed']} | {r['rejected_503']} |")
    lines += ["", "| method | clients | questions/min ÷ full |", "|---|---|---|"]
    lines += [f"| {r['method']} | {r['clients']} | {r['throughput_vs_full']:.2f} |" for r in ratios(rows)]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    """Runs `samkv-rag bench-load`."""
    questions, documents = _collection(args)
    meta = {"command": "samkv-rag bench-load " + " ".join(sys.argv[2:]), "model": args.model,
            "questions": len(questions), "documents": len(documents), "cpu_count": os.cpu_count(),
            # This process's machine, which is the server's only when it starts the server itself.
            "machine": None if args.url else machine(),
            # The started server's generation slots; unset, the server's default for its device.
            "max_concurrent_generations": os.environ.get("SAMKV_MAX_CONCURRENT_GENERATIONS", "default")
            if not args.url else "server's own"}
    if args.url:
        rows = _measure(args.url, args, questions, documents)
    else:
        with tempfile.TemporaryDirectory(prefix="samkv-load-") as scratch, \
                started_server(args.model, Path(scratch)) as url:
            rows = _measure(url, args, questions, documents)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows, "ratios": ratios(rows)}, indent=1))
    (args.out / "results.md").write_text(report(rows, meta))
    print(report(rows, meta))
    return 0 if all(r["failed"] == 0 for r in rows) else 1

