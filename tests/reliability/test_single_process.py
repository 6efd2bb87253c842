"""The embedded default: one `samkv-rag serve` on SQLite under its data dir. The same
guarantees as the replicas on PostgreSQL: ingests and deletes are searchable at once, a job
interrupted by SIGKILL resumes after the restart and finishes, and mixed load leaves the
index equal to the chunk table."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.reliability.facts import fact
from tests.reliability.harness import ServerProcess
from tests.reliability.replicas import (
    MixedLoad,
    Tables,
    converge,
    retrievable,
    sources,
    wait_for,
    wait_job,
)

pytestmark = pytest.mark.slow

SETTINGS = {
    "job_lease_s": 4,
    "job_heartbeat_s": 1,
    "method": "naive",
    "ingest_batch_size": 1,
    "max_concurrent_generations": 2,
    "max_queued_generations": 16,
}


def test_sqlite_restart_resumes_the_job_and_load_leaves_the_index_equal_to_the_table(
    start_server, figures
):
    server: ServerProcess = start_server(**SETTINGS)
    server.start()
    tables = Tables("", server.data_dir)
    try:
        item = fact(100)
        with server.client() as client:
            response = client.post("/v1/documents", params={"wait": "true"},
                                   json={"documents": [item.document()]})
            assert response.json()["status"] == "done", response.text
            assert retrievable(server, item)
            assert client.delete(f"/v1/documents/{item.id}").status_code == 200
            assert not retrievable(server, item)

            items = [fact(n) for n in range(20, 32)]
            response = client.post("/v1/documents", json={"documents": [i.document() for i in items]})
            assert response.status_code == 202, response.text
            job_id = response.json()["job_id"]
        wait_for(lambda: tables.owner_pid(job_id) == server.pid, "the job claimed", poll_s=0.01)
        server.kill()
        killed_at = time.monotonic()
        server.start()
        job = wait_job(server, job_id)
        resumed_s = time.monotonic() - killed_at
        assert job["status"] == "done", job
        assert tables.running_jobs() == []
        for item in items:
            assert item.id in sources(server, item.question), item.id

        deletable = [fact(n) for n in range(40, 72)]
        asked = [fact(n) for n in range(72, 76)]
        new = [fact(n) for n in range(80, 112)]
        with server.client() as client:
            seeded = client.post("/v1/documents", params={"wait": "true"},
                                 json={"documents": [i.document() for i in deletable + asked]})
        assert seeded.json()["status"] == "done", seeded.text
        load = MixedLoad()
        wall_s = asyncio.run(load.run([server.url], new, deletable, asked))
        converge([server], tables)
        figures["single_process_sqlite"] = {
            "kill_to_done_including_restart_s": round(resumed_s, 2),
            "lease_s": SETTINGS["job_lease_s"],
            "mixed_load": load.figures(wall_s),
            "chunks_in_table": tables.chunk_count(),
        }
        assert load.failures == []
        assert len(load.ingested) == len(new) and len(load.deleted) == len(deletable)
        assert tables.running_jobs() == []
    finally:
        tables.close()
