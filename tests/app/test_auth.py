"""API keys: every write (and API read, unless reads are public) refuses a missing key with 401
and a wrong one with 403."""

from __future__ import annotations

import httpx
import pytest

from tests.app.conftest import API_KEY

pytestmark = pytest.mark.slow

PROTECTED = [
    ("POST", "/v1/documents", {"json": {"documents": [{"text": "x"}]}}),
    ("POST", "/v1/documents", {"files": [("files", ("a.txt", b"x", "text/plain"))]}),
    ("DELETE", "/v1/documents/oriel-bank", {}),
    ("POST", "/v1/query", {"json": {"question": "x"}}),
    ("POST", "/v1/chat/completions", {"json": {"model": "m", "messages": [{"role": "user", "content": "x"}]}}),
    ("GET", "/v1/documents", {}),
    ("GET", "/v1/documents/oriel-bank", {}),
    ("GET", "/v1/jobs/some-job", {}),
    ("GET", "/metrics", {}),
]


@pytest.mark.parametrize(("method", "path", "kwargs"), PROTECTED)
def test_missing_and_wrong_keys_are_refused(live_server, method, path, kwargs):
    with httpx.Client(base_url=live_server) as anonymous:
        missing = anonymous.request(method, path, **kwargs)
        assert missing.status_code == 401
        assert missing.json()["error"]["type"] == "authentication_error"
        assert missing.headers["www-authenticate"] == "Bearer"
        wrong = anonymous.request(method, path, headers={"Authorization": "Bearer wrong"}, **kwargs)
        assert wrong.status_code == 403
        assert set(wrong.json()["error"]) == {"message", "type", "code"}
        not_bearer = anonymous.request(method, path, headers={"Authorization": API_KEY}, **kwargs)
        assert not_bearer.status_code == 401


@pytest.mark.parametrize("path", ["/", "/healthz", "/readyz", "/docs", "/openapi.json", "/static/app.js"])
def test_public_paths_need_no_key(live_server, path):
    assert httpx.get(live_server + path).status_code == 200


@pytest.fixture
def unstarted_app(tmp_path):
    """Factory: an app whose models never load (no lifespan), so answers past the key check
    are 503 `not_ready`: enough to see which requests the key check lets through."""
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.settings import Settings

    def make(**settings) -> TestClient:
        return TestClient(create_app(Settings(data_dir=tmp_path, api_keys=API_KEY, **settings)))

    return make


WRITES = PROTECTED[:3]
READS = PROTECTED[3:]


@pytest.mark.parametrize(("method", "path", "kwargs"), WRITES)
def test_writes_need_a_key_even_with_public_reads(unstarted_app, method, path, kwargs):
    client = unstarted_app(public_reads=True)
    assert client.request(method, path, **kwargs).status_code == 401
    wrong = client.request(method, path, headers={"Authorization": "Bearer wrong"}, **kwargs)
    assert wrong.status_code == 403
    # A key of another length is refused the same way (digests are compared, not the keys).
    longer = client.request(method, path, headers={"Authorization": f"Bearer {API_KEY}x"}, **kwargs)
    assert longer.status_code == 403
    accepted = client.request(method, path, headers={"Authorization": f"Bearer {API_KEY}"}, **kwargs)
    assert accepted.json()["error"]["code"] == "not_ready"


@pytest.mark.parametrize(("method", "path", "kwargs"), READS)
def test_public_reads_need_no_key(unstarted_app, method, path, kwargs):
    public = unstarted_app(public_reads=True).request(method, path, **kwargs)
    assert public.status_code == 200 or public.json()["error"]["code"] == "not_ready"
    assert unstarted_app().request(method, path, **kwargs).status_code == 401
