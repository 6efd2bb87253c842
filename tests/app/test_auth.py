"""API keys: every write (and API read) refuses a missing key with 401 and a wrong one with 403."""

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
