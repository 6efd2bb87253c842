"""The `samkv-rag` CLI's `ingest` and `ask` against the live server."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from tests.app.conftest import API_KEY

pytestmark = pytest.mark.slow


def _cli(*args: str, url: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "SAMKV_URL": url, "SAMKV_API_KEY": API_KEY}
    return subprocess.run([sys.executable, "-m", "app.cli", *args], env=env, capture_output=True,
                          text=True, timeout=600, check=False)


def test_ingest_folder_then_ask(live_server, tmp_path):
    folder = tmp_path / "notes"
    (folder / "deep").mkdir(parents=True)
    (folder / "ferry.txt").write_text("The Saltmere ferry ticket code is 8326. It sails at dawn.")
    (folder / "deep" / "mill.md").write_text("# Mill\n\nThe old mill on the Ardle river was built in 1712.")
    (folder / "ignored.bin").write_bytes(b"\x00\x01")
    ingested = _cli("ingest", str(folder), url=live_server)
    assert ingested.returncode == 0, ingested.stderr
    assert "ingested 2 of 2 documents" in ingested.stdout
    bar_lines = [line for line in ingested.stderr.splitlines() if "mill.md and 1 more" in line]
    assert bar_lines and "100%" in ingested.stderr, ingested.stderr  # the job's progress bar

    asked = _cli("ask", "What is the Saltmere ferry ticket code?", "--method", "full", "--top-k", "1",
                 url=live_server)
    assert asked.returncode == 0, asked.stderr
    assert "8326" in asked.stdout
    assert "ferry" in asked.stdout.splitlines()[-2]  # the source line
    assert "kept 100%)" in asked.stdout.splitlines()[-2]  # full keeps every token
    assert re.search(r"full: kept (\d+)/\1 tokens, KV cache [\d.]+ MiB, first token in \d+ ms",
                     asked.stdout.splitlines()[-1])
    as_json = _cli("ask", "What is the Saltmere ferry ticket code?", "--json", "--max-new-tokens", "4",
                   url=live_server)
    printed = json.loads(as_json.stdout)
    assert printed["stats"]["method"] == "samkv"
    assert len(printed["selection"]) == len(printed["sources"])


def test_ingest_reports_a_failed_batch_and_goes_on(live_server, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "blank.txt").write_text("   ")
    ingested = _cli("ingest", str(folder), url=live_server)
    assert ingested.returncode == 1
    assert "blank.txt: 422" in ingested.stderr and "holds no text" in ingested.stderr
    assert "ingested 0 of 1 documents" in ingested.stdout


def test_cli_reports_server_errors(live_server):
    bad = _cli("ask", "x", "--top-k", "0", url=live_server)
    assert bad.returncode == 1
    assert "422" in bad.stderr
