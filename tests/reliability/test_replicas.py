"""Three `samkv-rag serve` replicas on separate data dirs sharing this machine's PostgreSQL
and Redis: what one replica changes, the others find; a worker killed holding a job does not
lose it; mixed load leaves every replica's index equal to the chunk table."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import redis

from tests.reliability.conftest import SERVER_DEFAULTS
from tests.reliability.facts import fact
from tests.reliability.harness import ServerProcess, wait_ready
from tests.reliability.replicas import (
    MixedLoad,
    Tables,
    converge,
    retrievable,
    sources,
    visibility_s,
    wait_for,
    wait_job,
)
from tests.retrieval.postgres import postgres_schema

pytestmark = pytest.mark.slow

REDIS_URL = "redis://127.0.0.1:6379/0"
# Short leases so that a killed worker's job is reclaimed within seconds.
REPLICA_SETTINGS = {
    "job_lease_s": 4,
    "job_heartbeat_s": 1,
    "index_poll_s": 0.25,
    "method": "naive",
    "ingest_batch_size": 1,
    "max_concurrent_generations": 2,
    "max_queued_generations": 16,
}


@dataclass
class Cluster:
    database_url: str
    servers: list[ServerProcess]
    tables: Tables


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    prefix = f"samkv-test-{uuid.uuid4().hex[:8]}:"
    base = tmp_path_factory.mktemp("replicas")
    with postgres_schema() as url:
        settings = SERVER_DEFAULTS | REPLICA_SETTINGS | {
            "database_url": url, "redis_url": REDIS_URL, "redis_prefix": prefix}
        servers = []
        for n in range(3):
            (base / f"logs-{n}").mkdir()
            servers.append(ServerProcess(base / f"data-{n}", base / f"logs-{n}", **settings))
        tables = Tables(url, base / "tables")
        try:
            for server in servers:  # the three load their models at the same time
                server.launch()
            for server in servers:
                wait_ready(server.url, alive=lambda s=server: s.pid is not None)
            yield Cluster(url, servers, tables)
        finally:
            for server in servers:
                server.stop()
            tables.close()
            with redis.Redis.from_url(REDIS_URL) as client:
                for key in client.scan_iter(f"{prefix}*"):
                    client.delete(key)


def test_an_ingest_and_a_delete_reach_every_replica(cluster: Cluster, figures):
    a, b, c = cluster.servers
    item = fact(100)
    with a.client() as client:
        response = client.post("/v1/documents", params={"wait": "true"},
                               json={"documents": [item.document()]})
    assert response.status_code == 200 and response.json()["status"] == "done", response.text
    # Measured on the index itself (the table's ids in every replica), then checked by asking.
    added_s = visibility_s([b, c], cluster.tables)
    for server in (b, c):
        assert retrievable(server, item), server.url
    with b.client() as client:
        answer = client.post("/v1/query", json={"question": item.question, "top_k": 1,
                                                "max_new_tokens": 14, "method": "naive"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["sources"][0]["document_id"] == item.id

    with b.client() as client:
        assert client.delete(f"/v1/documents/{item.id}").status_code == 200
    deleted_s = visibility_s([a, c], cluster.tables)
    for server in (a, c):
        assert not retrievable(server, item), server.url
    figures["replicas_visibility"] = {
        "add_visible_on_other_replicas_s": added_s,
        "delete_visible_on_other_replicas_s": deleted_s,
        "answer_via_other_replica": answer.json()["answer"],
    }


def test_a_job_whose_worker_is_killed_finishes_on_another(cluster: Cluster, figures):
    items = [fact(n) for n in range(20, 32)]
    submitter = cluster.servers[0]
    with submitter.client() as client:
        response = client.post("/v1/documents", json={"documents": [i.document() for i in items]})
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]

    owner: dict[str, int | None] = {"pid": None}

    def claimed() -> bool:
        owner["pid"] = cluster.tables.owner_pid(job_id)
        return owner["pid"] is not None

    wait_for(claimed, "the job claimed by a worker", poll_s=0.01)
    victim = next(s for s in cluster.servers if s.pid == owner["pid"])
    victim.kill()
    killed_at = time.monotonic()
    survivor = next(s for s in cluster.servers if s is not victim)
    job = wait_job(survivor, job_id)
    reclaim_s = time.monotonic() - killed_at

    assert job["status"] == "done", job
    assert cluster.tables.running_jobs() == []
    for item in items:
        assert item.id in sources(survivor, item.question), item.id
    victim.start()
    converge_s = converge(cluster.servers, cluster.tables)
    figures["replicas_killed_worker"] = {
        "job_documents": len(items),
        "lease_s": REPLICA_SETTINGS["job_lease_s"],
        "kill_to_done_s": round(reclaim_s, 2),
        "restarted_replica_converged_s": round(converge_s, 2),
        "job_status": job["status"],
    }


def test_mixed_load_on_three_replicas_leaves_every_index_equal_to_the_table(cluster, figures):
    deletable = [fact(n) for n in range(40, 72)]
    asked = [fact(n) for n in range(72, 76)]
    new = [fact(n) for n in range(80, 112)]
    with cluster.servers[0].client() as client:
        seeded = client.post("/v1/documents", params={"wait": "true"},
                             json={"documents": [i.document() for i in deletable + asked]})
    assert seeded.status_code == 200 and seeded.json()["status"] == "done", seeded.text

    load = MixedLoad()
    wall_s = asyncio.run(load.run([s.url for s in cluster.servers], new, deletable, asked))
    converge_s = converge(cluster.servers, cluster.tables)
    figures["replicas_mixed_load"] = load.figures(wall_s) | {
        "replicas": len(cluster.servers),
        "chunks_in_table": cluster.tables.chunk_count(),
        "converged_after_load_s": round(converge_s, 2),
    }
    assert load.failures == []
    assert len(load.ingested) == len(new) and len(load.deleted) == len(deletable)
    assert cluster.tables.running_jobs() == []
    for item in new[:4] + asked:
        assert item.id in sources(cluster.servers[1], item.question), item.id
    for item in deletable[:4]:
        assert item.id not in sources(cluster.servers[2], item.question), item.id
