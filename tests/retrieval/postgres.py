"""A PostgreSQL schema of the test session's own on this machine's server, dropped afterwards.

Tests reach it through a URL whose `search_path` names the schema, exactly as a deployment
passes `SAMKV_DATABASE_URL`, so servers spawned by the tests share it too.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from urllib.parse import quote

import pytest
import sqlalchemy as sa

SERVER_URL = os.environ.get("SAMKV_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


@contextlib.contextmanager
def postgres_schema() -> Iterator[str]:
    """A fresh schema; yields a `postgresql://` URL that uses it. Fails the test when the
    server cannot be reached (run scripts/ensure_system_deps.sh)."""
    name = f"samkv_test_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(SERVER_URL.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.begin() as conn:
            conn.execute(sa.schema.CreateSchema(name))
    except sa.exc.OperationalError as error:
        engine.dispose()
        pytest.fail(f"PostgreSQL at {SERVER_URL} is not reachable: {error}")
    separator = "&" if "?" in SERVER_URL else "?"
    try:
        yield f"{SERVER_URL}{separator}options={quote(f'-csearch_path={name}')}"
    finally:
        with engine.begin() as conn:
            conn.execute(sa.schema.DropSchema(name, cascade=True))
        engine.dispose()
