"""Crashes and damaged files: `kill -9` while an ingestion job runs and an answer streams, and
the index and KV files damaged while the server is down; after the restart nothing
acknowledged is lost, the interrupted job resumes and finishes, the damage is found and
repaired, and the answers are right."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.app.conftest import parse_sse
from tests.reliability.facts import Fact, fact, kv_files
from tests.reliability.harness import ServerProcess, metric_value, wait_startup_check
from tests.reliability.replicas import wait_job

pytestmark = pytest.mark.slow

ACKNOWLEDGED = [fact(n) for n in range(4)]
DELETED = fact(4)
# Large enough that encoding its chunks takes a while, so the kill lands mid-job.
INTERRUPTED = [fact(n) for n in range(5, 13)]
JOB_POLL_S = 0.05


def _ingest_and_wait(client: httpx.Client, facts: list[Fact]) -> dict:
    response = client.post("/v1/documents", params={"wait": "true"},
                           json={"documents": [f.document() for f in facts]})
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "done", response.text
    return response.json()


def _sources(client: httpx.Client, item: Fact, top_k: int = 2) -> list[str]:
    body = {"question": item.question, "top_k": top_k, "max_new_tokens": 1}
    response = client.post("/v1/query", json=body)
    assert response.status_code == 200, response.text
    return [source["document_id"] for source in response.json()["sources"]]


def _answer(client: httpx.Client, item: Fact) -> str:
    # With one retrieved chunk, `naive` reuse is exact: the answer shows the stored KV is right.
    body = {"question": item.question, "top_k": 1, "max_new_tokens": 14, "method": "naive"}
    response = client.post("/v1/query", json=body)
    assert response.status_code == 200, response.text
    return response.json()["answer"]


def _assert_nothing_acknowledged_lost(server: ServerProcess, acknowledged_job: str) -> None:
    with server.client() as client:
        assert client.get(f"/v1/jobs/{acknowledged_job}").json()["status"] == "done"
        for item in ACKNOWLEDGED:
            document = client.get(f"/v1/documents/{item.id}")
            assert document.status_code == 200, f"{item.id} was lost: {document.text}"
            assert document.json()["text"] == item.text
            assert item.id in _sources(client, item)
        assert client.get(f"/v1/documents/{DELETED.id}").status_code == 404
        assert DELETED.id not in _sources(client, DELETED, top_k=8)


def _kill_during_ingestion_and_answer(server: ServerProcess) -> dict:
    """SIGKILL the server while an ingestion job runs and an answer streams; what was seen."""
    with server.client() as client:
        response = client.post("/v1/documents", json={"documents": [f.document() for f in INTERRUPTED]})
        assert response.status_code == 202, response.text
        job_id = response.json()["job_id"]
        # Some documents indexed, their KV caches not all stored yet.
        while True:
            job = client.get(f"/v1/jobs/{job_id}").json()
            if job["status"] in ("done", "failed") or job["documents_indexed"] >= 2:
                break
            time.sleep(JOB_POLL_S)
        body = {"question": ACKNOWLEDGED[0].question, "stream": True, "max_new_tokens": 256}
        with client.stream("POST", "/v1/query", json=body) as answer:
            assert answer.status_code == 200
            lines = []
            for line in answer.iter_lines():
                lines.append(line)
                tokens = sum(1 for name, _ in parse_sse(lines) if name == "token")
                if tokens >= 2:
                    job = client.get(f"/v1/jobs/{job_id}").json()
                    server.kill()
                    break
    return {"job_id": job_id, "job_status_at_kill": job["status"],
            "documents_indexed_at_kill": job["documents_indexed"],
            "tokens_streamed_at_kill": tokens}


def _damage_files(server: ServerProcess, chunk_texts: dict[str, str]) -> dict[str, str]:
    """Damage the index and three KV files, and leave one orphan KV file; what was done."""
    data = server.data_dir
    index = data / "index.faiss"
    raw = bytearray(index.read_bytes())
    # A flipped byte in the vectors: FAISS still reads the file, only the checksum notices.
    raw[len(raw) // 2] ^= 0xFF
    index.write_bytes(bytes(raw))

    intact = kv_files(data, chunk_texts[ACKNOWLEDGED[0].id])[0]
    truncated, flipped, removed = (kv_files(data, chunk_texts[f.id])[0] for f in ACKNOWLEDGED[1:4])
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    blob = bytearray(flipped.read_bytes())
    blob[-64] ^= 0xFF  # in the last layer's tensor bytes
    flipped.write_bytes(bytes(blob))
    removed.unlink()
    # A cache of a chunk no document has (what a crash between deleting a document and
    # deleting its caches leaves behind).
    fingerprint = intact.name.split(".")[1]
    orphan = data / "kv" / "00" / "00" / f"{'00' * 32}.{fingerprint}.safetensors"
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(intact.read_bytes())
    return {"index.faiss": "one byte flipped", "kv_truncated": truncated.name[:12],
            "kv_byte_flipped": flipped.name[:12], "kv_removed": removed.name[:12],
            "kv_orphan_added": orphan.name[:12]}


def test_kill_during_ingestion_and_answer_then_damaged_files(start_server, figures):
    server = start_server(max_queued_ingest_jobs=4, ingest_batch_size=1, job_lease_s=4,
                          job_heartbeat_s=1)
    server.start()
    with server.client() as client:
        acknowledged_job = _ingest_and_wait(client, ACKNOWLEDGED + [DELETED])["job_id"]
        assert client.delete(f"/v1/documents/{DELETED.id}").status_code == 200
        chunk_texts = {item.id: client.get(f"/v1/documents/{item.id}").json()["chunks"][0]["text"]
                       for item in ACKNOWLEDGED}

    killed = _kill_during_ingestion_and_answer(server)
    assert killed["tokens_streamed_at_kill"] >= 2
    damage = _damage_files(server, chunk_texts)
    server.start()

    assert "index.faiss is unreadable (checksum mismatch" in server.log()
    _assert_nothing_acknowledged_lost(server, acknowledged_job)
    check = wait_startup_check(server.url)
    assert check["missing_kv"] >= 2, check  # the truncated and the removed file at least
    assert check["orphan_kv"] == 1, check
    assert check["repair"] == "done", check
    # The interrupted job is claimed again once the dead process's lease expired, and finishes.
    job = wait_job(server, killed["job_id"])
    assert job["status"] == "done", job
    with server.client() as client:
        for item in INTERRUPTED:
            document = client.get(f"/v1/documents/{item.id}")
            assert document.status_code == 200, f"{item.id} was lost: {document.text}"
            assert all(kv_files(server.data_dir, c["text"]) for c in document.json()["chunks"])
        answers = {item.id: _answer(client, item) for item in ACKNOWLEDGED}
        metrics = client.get("/metrics").text
    for item in ACKNOWLEDGED:
        assert item.answer in answers[item.id], answers
    # The flipped KV blob passed the header check at start-up; reading its layers caught it.
    assert metric_value(metrics, "kvstore_discarded_total", tier="disk", reason="corrupt") >= 1
    for item in ACKNOWLEDGED:
        assert kv_files(server.data_dir, chunk_texts[item.id]), f"{item.id} has no KV file"
    assert not list((server.data_dir / "kv" / "00" / "00").glob("0000*.safetensors"))

    figures["crash"] = {
        "server_starts": server.starts,
        "kills": 1,
        "killed_during": {**killed, "job_status_after_restart": job["status"]},
        "damaged_files": damage,
        "startup_check_after_restart": check,
        "acknowledged_documents": len(ACKNOWLEDGED),
        "acknowledged_documents_lost": 0,
        "answers_after_repair": answers,
    }
