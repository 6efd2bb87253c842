"""Fixtures of the service tests: one live uvicorn server (real models, real Redis), clients."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
import redis

API_KEY = "test-key-7c1f"
FACT_DOCUMENT = "The vault code at the Oriel bank is 4471. Only the night manager is allowed to use it."
OTHER_DOCUMENTS = [
    "The harbour master of Velmora is Ilse Brandt. She took the post in 2011 after a long career at sea.",
    "Copper from the Tarn mines is shipped every spring. The mines employ four hundred people.",
    "Lake Sorrel freezes in January. Skaters gather on its northern shore every weekend.",
]
REDIS_URL = "redis://127.0.0.1:6379/0"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def redis_prefix():
    """A key prefix of this test session's own; its keys are deleted afterwards."""
    prefix = f"samkv-test:{uuid.uuid4().hex}:"
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=prefix + "*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture(scope="session")
def app_settings(tmp_path_factory, redis_prefix):
    from app.settings import Settings

    return Settings(
        data_dir=tmp_path_factory.mktemp("service-data"),
        redis_url=REDIS_URL,
        redis_prefix=redis_prefix,
        api_keys=f"another-key,{API_KEY}",
        top_k=2,
        max_new_tokens=24,
        max_concurrent_generations=2,
    )


@contextmanager
def serving(settings, engine) -> Iterator[str]:
    """The app on a real uvicorn server on a free port, ready (models loaded); yields its URL."""
    import uvicorn

    from app.main import create_app

    port = _free_port()
    app = create_app(settings, engine=engine)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="test-uvicorn", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    try:
        while True:
            assert thread.is_alive(), "the server thread died during start-up"
            try:
                response = httpx.get(f"{url}/readyz", timeout=5)
                if response.status_code == 200:
                    break
                if response.json()["error"]["code"] == "startup_failed":
                    pytest.fail(response.text)
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("the server did not become ready")
            time.sleep(0.2)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=60)


@contextmanager
def chat_page(url: str):
    """The chat page at `url` in headless Chromium, the API key entered; yields the page."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update"],
        )
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        page.set_default_timeout(300_000)
        page.goto(url + "/")
        page.fill("#api-key", API_KEY)
        page.dispatch_event("#api-key", "change")
        try:
            yield page
        finally:
            context.close()
            browser.close()


@pytest.fixture(scope="session")
def live_server(app_settings, embedded_engine):
    """The app served with the embedded test engine; yields its URL."""
    with serving(app_settings, embedded_engine) as url:
        yield url


@pytest.fixture(scope="session")
def client(live_server):
    """An HTTP client of the live server that sends the API key."""
    with httpx.Client(
        base_url=live_server, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=600
    ) as http:
        yield http


@pytest.fixture(scope="session")
def fact_documents(client):
    """The fact document and three distractors, ingested and cached; their ids."""
    body = {"documents": [{"id": "oriel-bank", "text": FACT_DOCUMENT, "metadata": {"topic": "bank"}}]
            + [{"text": text} for text in OTHER_DOCUMENTS]}
    response = client.post("/v1/documents", params={"wait": "true"}, json=body)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "done", response.text
    return response.json()["document_ids"]


def parse_sse(lines) -> list[tuple[str, str]]:
    """(event, data) pairs of a server-sent event stream given as lines."""
    events, event, data = [], "message", []
    for line in lines:
        if line == "":
            if data:
                events.append((event, "\n".join(data)))
            event, data = "message", []
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip(" "))
    if data:
        events.append((event, "\n".join(data)))
    return events
