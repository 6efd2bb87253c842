"""What the replica and queue tests share: reading the shared tables directly, bounded waits,
questions whose sources tell whether a document is retrievable, and the mixed load."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from app.jobs import JobStore
from app.routers.health import index_digest
from retrieval import Database
from retrieval.store import DocumentStore
from tests.reliability.facts import Fact
from tests.reliability.harness import API_KEY, ServerProcess

# Generous deadlines: a wait fails only when the awaited state never comes.
CONVERGE_DEADLINE_S = 120.0
JOB_DEADLINE_S = 600.0
# Tries per request, 503s included: bounds the run even if a replica never frees a slot.
MAX_ATTEMPTS = 600


def wait_for(condition: Callable[[], bool], what: str, deadline_s: float = CONVERGE_DEADLINE_S,
             poll_s: float = 0.02) -> float:
    """Seconds until `condition()` held; fails the test past `deadline_s`."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > deadline_s:
            pytest.fail(f"{what}: not reached within {deadline_s} s")
        time.sleep(poll_s)
    return time.monotonic() - started


class Tables:
    """Direct reads of the shared tables (never through a replica)."""

    def __init__(self, database_url: str, data_dir: Path) -> None:
        self._database = Database(database_url, data_dir)
        self._store = DocumentStore(self._database)
        self._jobs = JobStore(self._database)

    def chunk_digest(self) -> str:
        return index_digest(self._store.chunk_ids())

    def chunk_count(self) -> int:
        return self._store.count_chunks()

    def running_jobs(self) -> list[str]:
        return [job.id for job in self._jobs.running()]

    def owner_pid(self, job_id: str) -> int | None:
        """The process id of the worker holding the job (owners are host:pid:nonce)."""
        owner = self._jobs.owner(job_id)
        return int(owner.split(":")[1]) if owner else None

    def close(self) -> None:
        self._database.close()


def index_state(server: ServerProcess) -> dict:
    response = httpx.get(f"{server.url}/readyz", timeout=30)
    return response.json().get("index", {}) if response.status_code == 200 else {}


def visibility_s(servers: list[ServerProcess], tables: Tables) -> list[float]:
    """Seconds until each replica's index holds exactly the table's chunk ids, polled together
    from now (fails the test past the deadline)."""
    digest = tables.chunk_digest()
    started = time.monotonic()
    seen: dict[int, float] = {}
    while len(seen) < len(servers):
        for server in servers:
            if server.port not in seen and index_state(server).get("ids_sha256") == digest:
                seen[server.port] = time.monotonic() - started
        if time.monotonic() - started > CONVERGE_DEADLINE_S:
            pytest.fail(f"replicas not equal to the chunk table: {sorted(seen)} of {len(servers)}")
        time.sleep(0.01)
    return [round(seen[server.port], 3) for server in servers]


def converge(servers: list[ServerProcess], tables: Tables) -> float:
    """Wait until every replica's index holds exactly the table's chunk ids; the seconds."""
    def equal() -> bool:
        digest = tables.chunk_digest()
        return all(index_state(s).get("ids_sha256") == digest for s in servers)
    return wait_for(equal, "every replica's index equal to the chunk table", poll_s=0.2)


def sources(server: ServerProcess, question: str, top_k: int = 3) -> list[str]:
    body = {"question": question, "top_k": top_k, "max_new_tokens": 1, "method": "naive"}
    with server.client() as client:
        for _ in range(MAX_ATTEMPTS):
            response = client.post("/v1/query", json=body)
            if response.status_code != 503:
                break
            time.sleep(float(response.headers.get("retry-after", 1)))
    assert response.status_code == 200, response.text
    return [source["document_id"] for source in response.json()["sources"]]


def retrievable(server: ServerProcess, item: Fact) -> bool:
    return item.id in sources(server, item.question)


def wait_job(server: ServerProcess, job_id: str) -> dict:
    """The job once finished (fails the test past the deadline)."""
    state: dict = {}

    def finished() -> bool:
        nonlocal state
        with server.client() as client:
            state = client.get(f"/v1/jobs/{job_id}").json()
        return state.get("status") in ("done", "failed")

    wait_for(finished, f"job {job_id} finished", JOB_DEADLINE_S, poll_s=0.1)
    return state


@dataclass
class MixedLoad:
    """32 clients, each a few requests: ingest a new fact, delete a seeded one, or ask."""

    clients: int = 32
    requests_per_client: int = 3
    failures: list[str] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    rejected_503: int = 0
    ingested: list[Fact] = field(default_factory=list)
    deleted: list[Fact] = field(default_factory=list)
    kinds: Counter = field(default_factory=Counter)

    def plan(self, sequence: int) -> tuple[str, int]:
        """Request `sequence`: its kind and the index of its fact among those of that kind."""
        return ("ingest", "delete", "ask")[sequence % 3], sequence // 3

    async def run(self, urls: list[str], new: list[Fact], deletable: list[Fact],
                  asked: list[Fact]) -> float:
        """Send the requests round-robin over `urls`; the wall time."""
        items = {"ingest": new, "delete": deletable, "ask": asked}
        limits = httpx.Limits(max_connections=self.clients + 8)
        headers = {"Authorization": f"Bearer {API_KEY}"}
        clients = [httpx.AsyncClient(base_url=url, headers=headers, timeout=600, limits=limits)
                   for url in urls]
        started = time.perf_counter()
        try:
            await asyncio.gather(*(self._client(clients, n, items) for n in range(self.clients)))
        finally:
            for client in clients:
                await client.aclose()
        return time.perf_counter() - started

    async def _client(self, clients: list[httpx.AsyncClient], number: int,
                      items: dict[str, list[Fact]]) -> None:
        for request in range(self.requests_per_client):
            sequence = number * self.requests_per_client + request
            kind, position = self.plan(sequence)
            item = items[kind][position % len(items[kind])]
            http = clients[sequence % len(clients)]
            for _ in range(MAX_ATTEMPTS):
                try:
                    response = await self._send(http, kind, item)
                except httpx.HTTPError as error:
                    self.failures.append(f"{kind} {item.id}: {error!r}")
                    break
                self.statuses[response.status_code] += 1
                if response.status_code != 503:
                    self._check(kind, item, response)
                    break
                self.rejected_503 += 1
                await asyncio.sleep(float(response.headers.get("retry-after", 1)))
            else:
                self.failures.append(f"{kind} {item.id}: still refused after {MAX_ATTEMPTS} tries")
            self.kinds[kind] += 1

    @staticmethod
    async def _send(http: httpx.AsyncClient, kind: str, item: Fact) -> httpx.Response:
        if kind == "ingest":
            return await http.post("/v1/documents", params={"wait": "true"},
                                   json={"documents": [item.document()]})
        if kind == "delete":
            return await http.delete(f"/v1/documents/{item.id}")
        body = {"question": item.question, "max_new_tokens": 2, "method": "naive"}
        return await http.post("/v1/query", json=body)

    def _check(self, kind: str, item: Fact, response: httpx.Response) -> None:
        if response.status_code != 200:
            self.failures.append(f"{kind} {item.id}: HTTP {response.status_code} {response.text[:200]}")
        elif kind == "ingest":
            if response.json()["status"] != "done":
                self.failures.append(f"ingest {item.id}: {response.json()}")
            else:
                self.ingested.append(item)
        elif kind == "delete":
            self.deleted.append(item)

    def figures(self, wall_s: float) -> dict:
        return {
            "clients": self.clients,
            "requests": self.clients * self.requests_per_client,
            "by_kind": dict(self.kinds),
            "failed_requests": len(self.failures),
            "deliberate_503_retried": self.rejected_503,
            "http_statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "documents_ingested": len(self.ingested),
            "documents_deleted": len(self.deleted),
            "wall_s": round(wall_s, 1),
        }
