"""Fixtures of the reliability tests: server subprocesses, a private Redis, the figures they
measure (printed at the end of the run, and written as JSON to `$RELIABILITY_FIGURES`)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.reliability.facts import fact
from tests.reliability.harness import (
    API_KEY,
    FaultyEngine,
    RedisProcess,
    ServerProcess,
    serve_in_thread,
)

FIGURES = pytest.StashKey[dict[str, Any]]()

# Small settings keep each server quick to start and each answer quick to decode.
SERVER_DEFAULTS: dict[str, Any] = {
    "model": "smollm2-135m-instruct",
    "api_keys": API_KEY,
    "engine_self_check": False,
    "max_new_tokens": 4,
    "top_k": 2,
    "retry_after_s": 1,
}


def pytest_configure(config: pytest.Config) -> None:
    config.stash[FIGURES] = {}


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    figures = config.stash.get(FIGURES, {})
    if not figures:
        return
    terminalreporter.section("reliability figures")
    terminalreporter.write_line(json.dumps(figures, indent=2, sort_keys=True))
    target = os.environ.get("RELIABILITY_FIGURES")
    if target:
        Path(target).write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Where a test records what it measured, under its own name."""
    return request.config.stash[FIGURES]


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Factory: a `ServerProcess` (not started) on a data dir of its own; stopped afterwards."""
    servers: list[ServerProcess] = []

    def make(data_dir: Path | None = None, command: str = "serve", **settings: Any) -> ServerProcess:
        index = len(servers)
        data = data_dir or tmp_path / f"data-{index}"
        logs = tmp_path / f"logs-{index}"
        logs.mkdir()
        server = ServerProcess(data, logs, command, **(SERVER_DEFAULTS | settings))
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def private_redis() -> Iterator[RedisProcess]:
    """A redis-server on a spare port of this test's own, started; stopped afterwards."""
    server = RedisProcess()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def inprocess_settings(tmp_path_factory: pytest.TempPathFactory):
    """Tight limits, so that the fuzzer and the limit tests meet them with small requests."""
    from app.settings import Settings

    return Settings(
        data_dir=tmp_path_factory.mktemp("inprocess-data"),
        api_keys=API_KEY,
        max_new_tokens=2,
        max_new_tokens_limit=2,
        top_k=2,
        max_top_k=2,
        max_question_chars=500,
        max_documents_per_request=4,
        max_request_bytes=64 * 1024,
        max_concurrent_generations=2,
        retry_after_s=1,
    )


@pytest.fixture(scope="session")
def inprocess_server(inprocess_settings, embedded_engine) -> Iterator[str]:
    """The app on uvicorn in a thread of the test process, its engine raising on request
    (`FaultyEngine`), with two documents ingested; yields its URL."""
    import httpx

    from app.main import create_app

    app = create_app(inprocess_settings, engine=FaultyEngine(embedded_engine))
    with serve_in_thread(app) as url:
        documents = {"documents": [fact(n).document() for n in range(2)]}
        response = httpx.post(f"{url}/v1/documents", params={"wait": "true"}, json=documents,
                              headers={"Authorization": f"Bearer {API_KEY}"}, timeout=600)
        assert response.status_code == 200 and response.json()["status"] == "done", response.text
        yield url
