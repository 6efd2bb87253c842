"""Helpers shared by the KV store tests: synthetic caches, a counting fake encoder, private Redis servers."""

from __future__ import annotations

import hashlib
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass

import pytest
import redis
import torch

from samkv.document import DocumentKV

FINGERPRINT = "test-model:weights=abc:tokenizer=def:template=ghi"
SHARED_REDIS_URL = "redis://127.0.0.1:6379/0"

# The embedded model's shapes (SmolLM2-135M): used where size matters, small ones elsewhere.
EMBEDDED_SHAPES = {"n_layers": 30, "n_kv_heads": 3, "head_dim": 64, "n_heads": 9, "window": 8}
SMALL_SHAPES = {"n_layers": 4, "n_kv_heads": 2, "head_dim": 8, "n_heads": 4, "window": 3}


def make_doc(
    seed: int,
    length: int = 24,
    *,
    fingerprint: str = FINGERPRINT,
    dtype: torch.dtype = torch.float32,
    n_layers: int = 4,
    n_kv_heads: int = 2,
    head_dim: int = 8,
    n_heads: int = 4,
    window: int = 3,
) -> DocumentKV:
    """A random but reproducible document cache."""
    g = torch.Generator().manual_seed(seed)
    kv_shape = (n_layers, n_kv_heads, length, head_dim)
    return DocumentKV(
        token_ids=torch.randint(0, 49152, (length,), generator=g),
        keys=(torch.randn(kv_shape, generator=g) * 3).to(dtype),
        values=torch.randn(kv_shape, generator=g).to(dtype),
        summary_queries=torch.randn((n_layers, n_heads, window, head_dim), generator=g).to(dtype),
        fingerprint=fingerprint,
        prefix_len=17,
    )


class FakeEncoder:
    """Stands in for the engine's `encode_document`: deterministic in the text, counts its calls."""

    def __init__(self, fingerprint: str = FINGERPRINT, **shapes: int) -> None:
        self.fingerprint = fingerprint
        self.shapes = shapes or SMALL_SHAPES
        self.calls: list[str] = []
        self.fail_on: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, text: str) -> DocumentKV:
        with self._lock:
            self.calls.append(text)
        if text in self.fail_on:
            raise RuntimeError(f"cannot encode {text!r}")
        seed = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)
        return make_doc(seed, 10 + len(text) % 20, fingerprint=self.fingerprint, **self.shapes)


def assert_same_doc(actual: DocumentKV, expected: DocumentKV) -> None:
    """Bit-exact equality of two caches (expected already in the storage dtype)."""
    assert actual.fingerprint == expected.fingerprint
    assert actual.prefix_len == expected.prefix_len
    assert torch.equal(actual.token_ids, expected.token_ids)
    for name in ("keys", "values", "summary_queries"):
        a, e = getattr(actual, name), getattr(expected, name)
        assert a.dtype == e.dtype, name
        assert torch.equal(a, e), name


def as_stored(doc: DocumentKV, dtype: torch.dtype = torch.float16) -> DocumentKV:
    """What the store returns for `doc` without quantisation: the input cast to the storage dtype."""
    return DocumentKV(
        doc.token_ids,
        doc.keys.to(dtype),
        doc.values.to(dtype),
        doc.summary_queries.to(dtype),
        doc.fingerprint,
        doc.prefix_len,
    )


@dataclass
class PrivateRedis:
    """A redis-server of the test's own, which the test may stop."""

    port: int
    process: subprocess.Popen

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_connect_timeout=1)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


def _spare_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_private_redis(*extra_args: str) -> PrivateRedis:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not on PATH")
    port = _spare_port()
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            *extra_args,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = PrivateRedis(port, process)
    deadline = time.monotonic() + 10
    while True:
        try:
            server.client().ping()
            return server
        except redis.ConnectionError:
            if time.monotonic() > deadline or process.poll() is not None:
                server.stop()
                pytest.fail(f"private redis-server on port {port} did not start")
            time.sleep(0.05)
