"""The context-length sweep: padding that keeps a question's evidence, and a small run end to end."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from app.bench.facts import mentions
from app.bench.generator import QAGenerator
from app.bench.sweep import add_arguments, padding_seed, run

SMALL_MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def count_tokens(embedded_tokenizer):
    return lambda text: len(embedded_tokenizer(text, add_special_tokens=False)["input_ids"])


def test_padding_keeps_the_question_and_its_evidence_and_reaches_the_length(count_tokens):
    base = QAGenerator(count_tokens, seed=100).questions(4, 3, 120, two_hop_fraction=0.5)
    for length in (800, 2000):
        padded = [QAGenerator(count_tokens, seed=padding_seed(100, length)).padded(item, length, 120) for item in base]
        again = [QAGenerator(count_tokens, seed=padding_seed(100, length)).padded(item, length, 120) for item in base]
        assert padded == again  # reproducible by seed and length
        for item, longer in zip(base, padded, strict=True):
            assert (longer.question, longer.answers, longer.kind) == (item.question, item.answers, item.kind)
            assert [longer.documents[i] for i in longer.gold_documents] == [item.documents[i] for i in item.gold_documents]
            own = [d for d in longer.documents if d in item.documents]
            assert own == list(item.documents)  # the question's documents in their order
            fillers = [d for d in longer.documents if d not in item.documents]
            assert not any(mentions(d, answer) for d in fillers for answer in item.answers)
            total = sum(count_tokens(d) for d in longer.documents)
            assert abs(total - length) <= 0.05 * length


def test_a_small_sweep_writes_one_row_per_method_and_length(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = tmp_path / "sweep"
    lengths = (300, 600)
    assert run(parser.parse_args([
        "--model", SMALL_MODEL, "--device", "cpu", "--context-tokens", "300,600,9000", "--questions", "1",
        "--docs", "2", "--doc-tokens", "100", "--methods", "full,naive,samkv", "--max-new-tokens", "4",
        "--split", "dev", "--out", str(out),
    ])) == 0
    captured = capsys.readouterr()
    assert "skipping 9000 context tokens" in captured.err and "8192 positions" in captured.err
    report = json.loads((out / "sweep.json").read_text())
    assert report["meta"]["context_tokens"] == list(lengths)
    assert report["meta"]["cache_state"] == "cold"
    assert report["meta"]["machine"]["torch_threads"] == torch.get_num_threads()
    labels = ["full", "naive", "samkv@0.15"]
    assert [(r["context_target"], r["label"]) for r in report["rows"]] == [(n, m) for n in lengths for m in labels]
    assert all(r["ttft_share_of_full"] is not None for r in report["rows"])
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert len(records) == len(lengths) * len(labels)
    for record in records:
        assert abs(record["context_tokens"] - record["context_target"]) <= 0.1 * record["context_target"]
        assert {"open_ms", "load_ms", "assemble_ms", "ttft_ms"} <= record.keys()
    table = (out / "sweep.md").read_text()
    assert table.count("| 600 |") == len(labels) and "assemble" in table
    assert report["meta"]["machine"]["cpu"] in table
    assert "600 tokens: TTFT / full: naive" in captured.out
    assert (out / "sweep.png").stat().st_size > 0


def test_the_sweep_refuses_documents_longer_than_the_shortest_length(tmp_path):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert run(parser.parse_args(["--context-tokens", "500", "--docs", "4", "--doc-tokens", "200",
                                  "--out", str(tmp_path)])) == 2
