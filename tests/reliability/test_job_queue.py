"""The durable ingestion queue without models: claims, leases, reclaiming after a worker's
death, giving up on a job that kills every worker, and two workers never sharing a job
(PostgreSQL's SKIP LOCKED). Also the compose file that runs the roles."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import yaml

from app.jobs import DONE, FAILED, QUEUED, RUNNING, JobStore, NewDocument
from kvstore import QueueFull
from retrieval import Database
from tests.retrieval.postgres import postgres_schema

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def sqlite_jobs(tmp_path):
    database = Database("", tmp_path)
    yield JobStore(database, max_attempts=2)
    database.close()


def _documents(n: int) -> list[NewDocument]:
    return [NewDocument(f"doc-{i}", f"text {i}", {"n": i}) for i in range(n)]


def test_a_job_is_committed_with_its_documents_and_claimed_once(sqlite_jobs):
    job = sqlite_jobs.create(_documents(2), max_queued=8)
    assert sqlite_jobs.get(job.id).status == QUEUED
    claimed, documents = sqlite_jobs.claim("worker-a", lease_s=60)
    assert claimed.id == job.id and claimed.status == RUNNING and claimed.attempts == 1
    assert documents == _documents(2)
    assert sqlite_jobs.claim("worker-b", lease_s=60) is None
    assert sqlite_jobs.heartbeat(job.id, "worker-a", lease_s=60)
    claimed.status = DONE
    assert sqlite_jobs.finish(claimed, "worker-a")
    finished = sqlite_jobs.get(job.id)
    assert finished.status == DONE and finished.document_ids == ["doc-0", "doc-1"]
    assert sqlite_jobs.running() == []


def test_an_expired_lease_passes_the_job_to_another_worker(sqlite_jobs):
    job = sqlite_jobs.create(_documents(1), max_queued=8)
    first, _ = sqlite_jobs.claim("dead-worker", lease_s=0)  # expires at once, as if it died
    second, documents = sqlite_jobs.claim("live-worker", lease_s=60)
    assert second.id == job.id and second.attempts == 2 and documents == _documents(1)
    # The first worker, had it only been paused, can no longer touch the job.
    assert not sqlite_jobs.heartbeat(job.id, "dead-worker", lease_s=60)
    assert not sqlite_jobs.update(first, "dead-worker")
    first.status = FAILED
    assert not sqlite_jobs.finish(first, "dead-worker")
    second.status = DONE
    assert sqlite_jobs.finish(second, "live-worker")
    assert sqlite_jobs.get(job.id).status == DONE


def test_a_job_that_kills_every_worker_is_failed_after_max_attempts(sqlite_jobs):
    job = sqlite_jobs.create(_documents(1), max_queued=8)
    for owner in ("first", "second"):
        assert sqlite_jobs.claim(owner, lease_s=0) is not None
    assert sqlite_jobs.claim("third", lease_s=60) is None
    failed = sqlite_jobs.get(job.id)
    assert failed.status == FAILED and "stopped 2 times" in failed.error


def test_a_released_job_goes_back_to_the_queue(sqlite_jobs):
    job = sqlite_jobs.create(_documents(1), max_queued=8)
    sqlite_jobs.claim("stopping", lease_s=60)
    sqlite_jobs.release(job.id, "stopping")
    claimed, _ = sqlite_jobs.claim("next", lease_s=60)
    assert claimed.id == job.id and claimed.attempts == 1


def test_a_full_queue_refuses_new_jobs(sqlite_jobs):
    sqlite_jobs.create(_documents(1), max_queued=1)
    with pytest.raises(QueueFull):
        sqlite_jobs.create(_documents(1), max_queued=1)


def test_concurrent_workers_on_postgresql_never_share_a_job():
    with postgres_schema() as url:
        database = Database(url, Path("/nonexistent-unused"))
        jobs = JobStore(database)
        created = {jobs.create(_documents(1), max_queued=100).id for _ in range(24)}
        claims: dict[str, list[str]] = {}
        barrier = threading.Barrier(4)

        def work(owner: str) -> None:
            barrier.wait()
            mine = claims.setdefault(owner, [])
            while (claimed := jobs.claim(owner, lease_s=60)) is not None:
                mine.append(claimed[0].id)

        threads = [threading.Thread(target=work, args=(f"w{n}",)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        database.close()
    taken = [job_id for ids in claims.values() for job_id in ids]
    assert sorted(taken) == sorted(created)  # each job exactly once


def test_compose_runs_the_roles_on_postgresql_and_redis_without_a_shared_volume():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"postgres", "redis", "api", "worker"} <= set(services)
    for role in ("api", "worker"):
        environment = services[role]["environment"]
        assert str(environment["SAMKV_DATABASE_URL"]).startswith("postgresql://")
        assert "REDIS_URL" in environment
        assert "volumes" not in services[role]
    assert services["worker"]["command"] == ["samkv-rag", "worker"]
