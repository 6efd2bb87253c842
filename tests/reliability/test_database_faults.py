"""The database out of reach: at start, `/readyz` answers 503 with the reason until it can be
reached; during requests, every answer is a 503 with Retry-After (never a 500, never a hang);
once it is back, nothing that was acknowledged is missing."""

from __future__ import annotations

import httpx
import pytest
import sqlalchemy as sa

from tests.reliability.facts import fact
from tests.reliability.harness import ServerProcess, wait_ready
from tests.reliability.replicas import retrievable, wait_for, wait_job
from tests.reliability.tcp_proxy import TcpProxy
from tests.retrieval.postgres import postgres_schema

pytestmark = pytest.mark.slow

# A request must answer within this even with the database gone: a hang fails the test.
REQUEST_TIMEOUT_S = 60.0


def _readyz(server: ServerProcess) -> httpx.Response:
    return httpx.get(f"{server.url}/readyz", timeout=REQUEST_TIMEOUT_S)


def test_database_unreachable_at_start_and_during_requests(start_server, figures):
    with postgres_schema() as url:
        upstream = sa.make_url(url)
        proxy = TcpProxy((upstream.host, upstream.port))
        proxied = url.replace(f"{upstream.host}:{upstream.port}", f"127.0.0.1:{proxy.port}")
        server = start_server(database_url=proxied, job_lease_s=4, job_heartbeat_s=1,
                              method="naive")
        server.start(wait=False)
        try:
            def unavailable_with_reason() -> bool:
                try:
                    response = _readyz(server)
                except httpx.TransportError:
                    return False
                return response.status_code == 503 and (
                    response.json()["error"]["code"] == "database_unavailable")
            wait_for(unavailable_with_reason, "readyz naming the database", 600, poll_s=0.5)
            at_start = _readyz(server)
            assert "database" in at_start.json()["error"]["message"]
            assert at_start.headers["retry-after"]

            proxy.start()
            wait_ready(server.url, alive=lambda: server.pid is not None)
            kept = fact(3)
            with server.client(timeout=REQUEST_TIMEOUT_S) as client:
                done = client.post("/v1/documents", params={"wait": "true"},
                                   json={"documents": [kept.document()]})
                assert done.json()["status"] == "done", done.text

                proxy.stop()
                requests = {
                    "ingest": lambda: client.post(
                        "/v1/documents", json={"documents": [fact(4).document()]}),
                    "query": lambda: client.post(
                        "/v1/query", json={"question": kept.question, "max_new_tokens": 1}),
                    "list": lambda: client.get("/v1/documents"),
                    "get": lambda: client.get(f"/v1/documents/{kept.id}"),
                    "delete": lambda: client.delete(f"/v1/documents/{kept.id}"),
                    "job": lambda: client.get(f"/v1/jobs/{done.json()['job_id']}"),
                }
                during = {name: call() for name, call in requests.items()}
                readyz_during = _readyz(server)

                proxy.start()
                wait_ready(server.url, alive=lambda: server.pid is not None)
                acknowledged = client.post("/v1/documents", json={"documents": [fact(5).document()]})
                assert acknowledged.status_code == 202, acknowledged.text
                job = wait_job(server, acknowledged.json()["job_id"])
            assert retrievable(server, kept)
            assert retrievable(server, fact(5))
        finally:
            proxy.stop()
            server.stop()

    statuses = {name: response.status_code for name, response in during.items()}
    figures["database_faults"] = {
        "readyz_at_start": at_start.json()["error"]["message"][:160],
        "statuses_during_outage": statuses,
        "readyz_during_outage": readyz_during.status_code,
        "job_after_recovery": job["status"],
    }
    assert all(status == 503 for status in statuses.values()), statuses
    assert all(response.headers.get("retry-after") for response in during.values())
    assert readyz_during.status_code == 503
    assert job["status"] == "done"
