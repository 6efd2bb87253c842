"""`samkv-rag`: serve the API, ingest files, ask questions, run the benchmarks.

`ingest` and `ask` talk to a running server with `--url` (or `SAMKV_URL`); without one they
load the models and work directly on the data dir. Flags override the `SAMKV_*` settings.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from app.bench.commands import COMMANDS as BENCH_COMMANDS
from app.settings import Settings

logger = logging.getLogger(__name__)

_UPLOAD_BATCH = 16
T = TypeVar("T")
_POLL_S = 0.5


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `samkv-rag` console script."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if args.command in BENCH_COMMANDS:
        from app.bench.commands import run_command

        return run_command(args.command, extra)
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO if args.command in ("serve", "worker") else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.run(args)
    except KeyboardInterrupt:
        return 130
    except CliError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except Exception as error:
        # The typed errors of the parts carry messages meant for the user.
        from app.errors import to_api_error

        api_error = to_api_error(error)
        if api_error.status >= 500:
            raise
        print(f"error: {api_error.message}", file=sys.stderr)
        return 1


class CliError(Exception):
    """A failure to report in one line, without a traceback."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="samkv-rag", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the HTTP API and the chat page")
    _add_settings_flags(serve)
    serve.add_argument("--host", help="address to listen on (SAMKV_HOST)")
    serve.add_argument("--port", type=int, help="port to listen on (SAMKV_PORT)")
    serve.add_argument("--sample-collection", action="store_true", default=None,
                       help="ingest the bundled sample documents when none are stored")
    serve.add_argument("--no-worker", dest="worker", action="store_false", default=None,
                       help="serve the API only; ingestion jobs wait for a worker (SAMKV_WORKER)")
    serve.set_defaults(run=_serve)

    worker = commands.add_parser("worker", help="run ingestion jobs only (no HTTP API)")
    _add_settings_flags(worker)
    worker.set_defaults(run=_worker)

    ingest = commands.add_parser("ingest", help="ingest files and folders (.txt, .md, .html)")
    ingest.add_argument("paths", nargs="+", type=Path)
    _add_client_flags(ingest)
    _add_settings_flags(ingest)
    ingest.set_defaults(run=_ingest)

    ask = commands.add_parser("ask", help="ask a question and stream the answer")
    ask.add_argument("question")
    ask.add_argument("--method", help="reuse method, one of the engine's (default: samkv)")
    ask.add_argument("--keep-ratio", type=float)
    ask.add_argument("--top-k", type=int)
    ask.add_argument("--max-new-tokens", type=int)
    ask.add_argument("--json", action="store_true", help="print the whole answer as JSON")
    _add_client_flags(ask)
    _add_settings_flags(ask)
    ask.set_defaults(run=_ask)

    # The benchmarks parse their own flags; they are handed over untouched.
    for name, text in BENCH_COMMANDS.items():
        commands.add_parser(name, help=text, add_help=False)
    return parser


def _add_settings_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", type=Path, help="data directory (SAMKV_DATA_DIR)")
    parser.add_argument("--model", help="local checkpoint path; empty for the embedded model")
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--redis-url", help="Redis for the shared KV tier (REDIS_URL)")
    parser.add_argument("--database-url",
                        help="PostgreSQL shared by replicas (SAMKV_DATABASE_URL); empty for SQLite")


def _add_client_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=os.environ.get("SAMKV_URL"),
                        help="a running server (SAMKV_URL); without it, work on the data dir")
    parser.add_argument("--api-key", default=os.environ.get("SAMKV_API_KEY"),
                        help="sent as a bearer token (SAMKV_API_KEY)")


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {
        name: getattr(args, name)
        for name in ("data_dir", "model", "device", "redis_url", "database_url", "host", "port",
                     "sample_collection", "worker")
        if getattr(args, name, None) is not None
    }
    return Settings(**overrides)


# --- serve ----------------------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from app.main import create_app

    settings = _settings(args)
    host = "localhost" if settings.host in ("0.0.0.0", "::") else settings.host
    print(f"SamKV RAG on http://{host}:{settings.port}/  (API docs: /docs)", flush=True)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info")
    return 0


def _worker(args: argparse.Namespace) -> int:
    import signal
    import threading

    args.worker = True
    services = _load_services(args)
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    print(f"ingestion worker {services.ingestor.worker_id} on {services.retrieval.database.description}",
          flush=True)
    try:
        while not stopping.wait(1.0):
            pass
    finally:
        # A job in progress goes back to the queue for another worker.
        services.close()
    return 0


# --- ingest ---------------------------------------------------------------------------------


def _files(paths: Sequence[Path]) -> list[Path]:
    from retrieval import supported_suffixes

    suffixes = set(supported_suffixes())
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in suffixes))
        elif path.is_file():
            found.append(path)
        else:
            raise CliError(f"{path} does not exist")
    if not found:
        raise CliError("no files to ingest (accepted: " + ", ".join(sorted(suffixes)) + ")")
    return found


def _ingest(args: argparse.Namespace) -> int:
    files = _files(args.paths)
    failed = _ingest_remote(args, files) if args.url else _ingest_local(args, files)
    print(f"ingested {len(files) - failed} of {len(files)} documents")
    return 1 if failed else 0


def _batches(items: Sequence[T]) -> list[Sequence[T]]:
    return [items[start : start + _UPLOAD_BATCH] for start in range(0, len(items), _UPLOAD_BATCH)]


def _job_label(batch: Sequence[Path]) -> str:
    return batch[0].name if len(batch) == 1 else f"{batch[0].name} and {len(batch) - 1} more"


def _ingest_remote(args: argparse.Namespace, files: list[Path]) -> int:
    """Upload the files in batches, one job each, then follow the jobs; the documents that failed."""
    failed = 0
    with _client(args) as client:
        jobs: list[tuple[str, str, int]] = []
        for batch in _batches(files):
            uploads = [("files", (p.name, p.read_bytes())) for p in batch]
            try:
                response = client.post("/v1/documents", files=uploads)
                _check(response)
            except CliError as error:  # a bad file refuses its batch only
                print(f"{_job_label(batch)}: {error}", file=sys.stderr)
                failed += len(batch)
                continue
            jobs.append((response.json()["job_id"], _job_label(batch), len(batch)))

        def job_state(job_id: str) -> dict[str, Any]:
            response = client.get(f"/v1/jobs/{job_id}")
            _check(response)
            return response.json()

        return failed + _follow_jobs(jobs, job_state)


def _follow_jobs(jobs: list[tuple[str, str, int]], job_state: Callable[[str], dict[str, Any]]) -> int:
    """Poll (job id, label, documents) until every job finished, one progress bar per job;
    the number of documents in the jobs that failed."""
    from tqdm import tqdm

    bars = {
        job_id: tqdm(total=100, desc=label, unit="%", position=i, leave=True,
                     bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}{postfix}")
        for i, (job_id, label, _) in enumerate(jobs)
    }
    documents = {job_id: count for job_id, _, count in jobs}
    failed = 0
    pending = list(bars)
    try:
        while pending:
            for job_id in list(pending):
                job = job_state(job_id)
                bar = bars[job_id]
                bar.update(round(job["progress"] * 100) - bar.n)
                bar.set_postfix_str(job["status"], refresh=True)
                if job["status"] in ("done", "failed"):
                    pending.remove(job_id)
                if job["status"] == "failed":
                    failed += documents[job_id]
                    bar.set_postfix_str(f"failed: {job.get('error')}", refresh=True)
            if pending:
                time.sleep(_POLL_S)
    finally:
        for bar in bars.values():
            bar.close()
    return failed


def _ingest_local(args: argparse.Namespace, files: list[Path]) -> int:
    """Ingest batch after batch into the data dir, following each job; the documents that failed."""
    from app.ingestion import NewDocument, new_document_id
    from retrieval import extract_text

    documents = [
        NewDocument(new_document_id(), extract_text(p.name, p.read_bytes()), {"filename": p.name})
        for p in files
    ]
    services = _load_services(args)

    def job_state(job_id: str) -> dict[str, Any]:
        job = services.ingestor.get(job_id)
        if job is None:
            return {"status": "failed", "progress": 0.0, "error": "the job was lost"}
        return {"status": job.status, "progress": job.progress, "error": job.error}

    try:
        failed = 0
        for paths, batch in zip(_batches(files), _batches(documents), strict=True):
            job = services.ingestor.submit(batch)
            failed += _follow_jobs([(job.id, _job_label(paths), len(batch))], job_state)
        return failed
    finally:
        services.close()


# --- ask ------------------------------------------------------------------------------------


def _ask(args: argparse.Namespace) -> int:
    body = {
        "question": args.question,
        "method": args.method,
        "keep_ratio": args.keep_ratio,
        "top_k": args.top_k,
        "max_new_tokens": args.max_new_tokens,
        "include_selection": True,
    }
    body = {k: v for k, v in body.items() if v is not None}
    events = _ask_remote(args, body) if args.url else _ask_local(args, body)
    answer, sources, stats, selection = "", [], {}, []
    for event, data in events:
        if event == "sources":
            sources = data["sources"]
        elif event == "token":
            answer += data["text"]
            if not args.json:
                print(data["text"], end="", flush=True)
        elif event == "done":
            stats, selection = data["stats"], data.get("selection") or []
        elif event == "error":
            raise CliError(data["error"]["message"])
    if args.json:
        print(json.dumps({"answer": answer, "sources": sources, "stats": stats, "selection": selection},
                         indent=2))
        return 0
    print()
    for i, source in enumerate(sources, 1):
        preview = " ".join(source["text"].split())[:80]
        kept = f" kept {selection[i - 1]['kept_share']:.0%}" if len(selection) >= i else ""
        print(f"  [{i}] {source['document_id']} #{source['chunk_id']} ({source['score']:.2f}{kept}) {preview}")
    if stats:
        print(f"  {stats['method']}: kept {stats['kept_tokens']}/{stats['context_tokens']} tokens, "
              f"KV cache {stats['kv_bytes_decode'] / 2**20:.1f} MiB, "
              f"first token in {stats['ttft_ms']:.0f} ms, {stats['tokens_per_s']:.1f} tokens/s")
    return 0


def _ask_remote(args: argparse.Namespace, body: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    with _client(args) as client, client.stream(
        "POST", "/v1/query", json={**body, "stream": True}
    ) as response:
        if response.status_code >= 400:
            response.read()
            _check(response)
        event = "message"
        for line in response.iter_lines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                yield event, json.loads(line[5:])
                event = "message"


def _ask_local(args: argparse.Namespace, body: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    from app.routers.query import sources_of
    from app.selection import source_selections

    services = _load_services(args)
    try:
        question = body["question"]
        services.validate_question(question)
        hits = services.retrieval.search(question, body.get("top_k") or services.settings.top_k)
        sources = sources_of(hits)
        yield "sources", {"sources": [s.model_dump() for s in sources]}
        stream = services.open_stream(
            question, hits, method=body.get("method"), keep_ratio=body.get("keep_ratio"),
            max_new_tokens=body.get("max_new_tokens"),
        )
        for piece in stream:
            yield "token", {"text": piece}
        selection = source_selections(sources, stream.kept_per_document, stream.recomputed_per_document,
                                      services.engine.document_token_spans)
        yield "done", {"stats": stream.stats, "selection": [s.model_dump() for s in selection]}
    finally:
        services.close()


def _load_services(args: argparse.Namespace):
    from prometheus_client import CollectorRegistry

    from app.metrics import AppMetrics
    from app.services import Services

    print("loading the models…", file=sys.stderr, flush=True)
    return Services.load(_settings(args), AppMetrics(CollectorRegistry()))


def _client(args: argparse.Namespace):
    import httpx

    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    return httpx.Client(base_url=args.url.rstrip("/"), headers=headers, timeout=httpx.Timeout(10.0, read=600.0))


def _check(response: Any) -> None:
    if response.status_code >= 400:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:200]
        raise CliError(f"{response.status_code}: {message}")


if __name__ == "__main__":
    sys.exit(main())
