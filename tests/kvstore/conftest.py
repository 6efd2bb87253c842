"""Fixtures for the KV store tests: a counting fake encoder and real Redis servers, cleaned up after."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis

from tests.kvstore.kvstore_testing import (
    SHARED_REDIS_URL,
    FakeEncoder,
    PrivateRedis,
    start_private_redis,
)


@pytest.fixture
def encoder() -> FakeEncoder:
    return FakeEncoder()


@pytest.fixture(scope="session")
def shared_redis_url() -> str:
    client = redis.Redis.from_url(SHARED_REDIS_URL, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.ConnectionError as exc:
        pytest.fail(f"the KV store tests need Redis on 127.0.0.1:6379: {exc}")
    finally:
        client.close()
    return SHARED_REDIS_URL


@pytest.fixture
def redis_prefix(shared_redis_url: str) -> Iterator[str]:
    """A key prefix no other test uses; every key under it is deleted afterwards."""
    prefix = f"kvstore-test:{uuid.uuid4().hex}:"
    yield prefix
    client = redis.Redis.from_url(shared_redis_url)
    keys = list(client.scan_iter(match=f"{prefix}*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    server = start_private_redis()
    yield server
    server.stop()
