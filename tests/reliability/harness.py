"""Real processes for the reliability tests: the service as a subprocess that can be killed
with SIGKILL and restarted on its data dir, a private redis-server that can be stopped and
started again on its port, and the app served from a thread of the test process."""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "reliability-key-51d0"
# Loading the models takes seconds, and much longer on a CPU shared with other test runs.
READY_TIMEOUT_S = 600.0


def free_port() -> int:
    """A TCP port on the loopback interface nobody listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(
    url: str, alive: Callable[[], bool] = lambda: True, timeout_s: float = READY_TIMEOUT_S
) -> dict:
    """Poll `/readyz` until the server answers 200; its body. Fails the test on start-up errors."""
    deadline = time.monotonic() + timeout_s
    while True:
        if not alive():
            pytest.fail(f"the server at {url} exited during start-up")
        try:
            response = httpx.get(f"{url}/readyz", timeout=5)
            if response.status_code == 200:
                return response.json()
            if response.json()["error"]["code"] == "startup_failed":
                pytest.fail(response.text)
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"the server at {url} did not become ready")
        time.sleep(0.2)


def wait_startup_check(url: str, timeout_s: float = READY_TIMEOUT_S) -> dict:
    """Wait until the start-up consistency check has run and its repair finished; its report."""
    deadline = time.monotonic() + timeout_s
    while True:
        check = httpx.get(f"{url}/readyz", timeout=5).json()["startup_check"]
        if check is not None and check["repair"] in ("done", "failed"):
            return check
        if time.monotonic() > deadline:
            pytest.fail(f"the start-up check did not finish: {check}")
        time.sleep(0.2)


class ServerProcess:
    """`samkv-rag serve` (or `worker`) in a subprocess on `data_dir`, configured by `SAMKV_*`
    variables."""

    def __init__(
        self, data_dir: Path, log_dir: Path, command: str = "serve", **settings: Any
    ) -> None:
        self.command = command
        self.data_dir = data_dir
        self.log_dir = log_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.settings = settings
        self.process: subprocess.Popen | None = None
        self.starts = 0

    def environment(self) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith("SAMKV_")}
        env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
        env.update(SAMKV_DATA_DIR=str(self.data_dir), SAMKV_PORT=str(self.port),
                   SAMKV_HOST="127.0.0.1")
        for name, value in self.settings.items():
            env[f"SAMKV_{name.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
        return env

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"{self.command}-{self.port}-{self.starts}.log"

    @property
    def pid(self) -> int | None:
        """The running process's id, None when it is not running."""
        running = self.process is not None and self.process.poll() is None
        return self.process.pid if running else None

    def start(self, wait: bool = True) -> dict:
        """Start the process; with `wait`, wait until ready and return the body of its `/readyz`
        (for a worker, until it runs: an empty dict)."""
        self.launch()
        if self.command == "worker":
            return self.wait_worker()
        return wait_ready(self.url, alive=lambda: self.process.poll() is None) if wait else {}

    def launch(self) -> None:
        """Start the process without waiting for it."""
        assert self.process is None or self.process.poll() is not None, "already running"
        self.starts += 1
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "app.cli", self.command],
                cwd=ROOT,
                env=self.environment(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_worker(self) -> dict:
        """Wait until a worker process has loaded its models and runs."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while "ingestion worker " not in self.log():
            if self.process.poll() is not None:
                pytest.fail(f"the worker exited during start-up:\n{self.log()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail("the worker did not start")
            time.sleep(0.2)
        return {}

    def kill(self) -> None:
        """SIGKILL: no shutdown handler runs, nothing is flushed or saved."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        """A graceful stop (SIGTERM), falling back to SIGKILL."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.kill()

    def log(self) -> str:
        """Everything the server wrote in its latest run."""
        return self.log_path.read_text(errors="replace")

    def client(self, **kwargs: Any) -> httpx.Client:
        """A client of the server that sends the API key."""
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {API_KEY}"},
                            **({"timeout": 300} | kwargs))


class RedisProcess:
    """A redis-server of the test's own on a fixed port, which can be stopped and restarted."""

    def __init__(self) -> None:
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            pytest.fail("redis-server is not on PATH")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        """Start (again) on the same port, empty: nothing is persisted between runs."""
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
        deadline = time.monotonic() + 30
        while True:
            try:
                client.ping()
                client.close()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.stop()
                    pytest.fail(f"redis-server on port {self.port} did not start")
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


@contextlib.contextmanager
def serve_in_thread(app: Any) -> Iterator[str]:
    """Serve an ASGI app with uvicorn from a thread of this process until ready; yields its URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="reliability-uvicorn", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, alive=thread.is_alive)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=60)


def percentile(values: list[float], share: float) -> float:
    """The `share` (0 to 1) percentile of `values` by the nearest-rank method."""
    ordered = sorted(values)
    rank = max(1, math.ceil(share * len(ordered)))
    return ordered[rank - 1]


def metric_value(text: str, name: str, **labels: str) -> float:
    """The value of one sample in a Prometheus text exposition; 0 when it is absent."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


class FaultyEngine:
    """The real engine, except that a question containing a marker makes it raise: at once
    (`FAULT_AT_START`) or after the first decoded piece (`FAULT_MID_STREAM`)."""

    FAULT_AT_START = "[raise-at-start]"
    FAULT_MID_STREAM = "[raise-mid-stream]"

    def __init__(self, engine: Any) -> None:
        self._engine = engine

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def stream(self, question: str, *args: Any, **kwargs: Any) -> Any:
        if self.FAULT_AT_START in question:
            raise RuntimeError("injected fault: the model failed before decoding")
        stream = self._engine.stream(question, *args, **kwargs)
        return _FailingStream(stream) if self.FAULT_MID_STREAM in question else stream


class _FailingStream:
    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self.stats = None

    def __iter__(self) -> Iterator[str]:
        for piece in self._stream:
            yield piece
            raise RuntimeError("injected fault: the model failed while decoding")
