"""The benchmark harness: generated data, the LongBench loader, metrics, and a small end-to-end run."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from app.bench.command import add_arguments, run, store_source_factory
from app.bench.generator import QAGenerator
from app.bench.longbench import DatasetError, load_longbench
from app.bench.metrics import (
    answer_kept,
    answer_token_spans,
    contains_match,
    exact_match,
    f1,
    normalize,
)
from app.bench.report import write_report
from app.bench.runner import method_configs, ratio_parameter, run_questions, runs_at_defaults
from app.bench.selection import select_questions, selection_table, summarise_selection
from app.bench.summary import summarise

RESULT_FIELDS = {
    "method", "keep_ratio", "exact_match", "f1", "answer_logprob", "agreement_with_full", "ttft_ms_median",
    "ttft_ms_p90", "decode_tokens_per_s", "kv_bytes_decode", "kv_bytes_peak", "recomputed_tokens",
}


@pytest.fixture(scope="module")
def count_tokens(embedded_tokenizer):
    return lambda text: len(embedded_tokenizer(text, add_special_tokens=False)["input_ids"])


def test_squad_style_metrics():
    assert normalize("The  Ravholm!") == "ravholm"
    assert exact_match("the Ravholm.", ["Ravholm"]) == 1.0
    assert exact_match("It is Ravholm", ["Ravholm"]) == 0.0
    assert contains_match("Ilse lives in the town of Ravholm.", ["Ravholm"]) == 1.0
    assert contains_match("Ravholmen", ["Ravholm"]) == 0.0
    assert f1("lives in Ravholm", ["Ravholm"]) == pytest.approx(0.5)
    assert f1("Velvik", ["Ravholm", "Velvik"]) == 1.0


def test_answer_spans_are_found_in_decoded_tokens_and_judged_against_the_kept_set():
    pieces = ["The", " code", " is", " 48", "21", ".", " Ost", "stad", " 4821x"]
    assert answer_token_spans(pieces, ("4821",)) == [[3, 4]]  # "4821x" is another word
    assert answer_token_spans(pieces, ("Oststad", "Ost")) == [[6, 7]]
    assert answer_token_spans(pieces, ("Velvik",)) == []
    spans = answer_token_spans(pieces, ("4821",))
    assert answer_kept(spans, {3, 4, 6}) == 1.0
    assert answer_kept(spans, {3}) == 0.0  # half an answer is not kept
    assert answer_kept([], {0, 1}) is None


def test_longbench_loader_reads_json_and_jsonl(tmp_path):
    record = {
        "input": "Which city is the band from?",
        "context": "Passage 1:\nThe band formed in Leeds.\nPassage 2:\nLeeds is in England.",
        "answers": ["Leeds"],
        "dataset": "hotpotqa",
    }
    jsonl = tmp_path / "hotpotqa.jsonl"
    jsonl.write_text(json.dumps(record) + "\n" + json.dumps({**record, "input": "Second?"}) + "\n")
    questions = load_longbench(jsonl)
    assert [q.question for q in questions] == ["Which city is the band from?", "Second?"]
    assert questions[0].documents == ("The band formed in Leeds.", "Leeds is in England.")
    assert questions[0].answers == ("Leeds",)
    as_json = tmp_path / "musique.json"
    as_json.write_text(json.dumps([record]))
    assert load_longbench(as_json, max_docs=1)[0].documents == ("The band formed in Leeds.",)
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps({"input": "q"}) + "\n")
    with pytest.raises(DatasetError, match="lacks answers, context"):
        load_longbench(broken)


def test_rows_follow_what_each_method_declares():
    # Sparse methods get one row per keep ratio, cacheblend one per recompute ratio, methods
    # without a ratio one row, and epic (whose recompute ratio is optional) both.
    assert ratio_parameter("samkv") == ratio_parameter("snapkv") == "keep_ratio"
    assert ratio_parameter("cacheblend") == "recompute_ratio"
    assert ratio_parameter("full") is ratio_parameter("naive") is None
    assert [runs_at_defaults(m) for m in ("full", "samkv", "cacheblend")] == [True, False, False]
    labels = [c.label for c in method_configs(["naive", "samkv", "full", "cacheblend"], [0.15, 0.05], ablations=[])]
    assert labels == ["full", "naive", "samkv@0.15", "samkv@0.05", "cacheblend@0.15", "cacheblend@0.05"]
    epic = method_configs(["epic"], [0.15], ablations=[])
    expected = [("epic", {})] + ([("epic@0.15", {"recompute_ratio": 0.15})] if ratio_parameter("epic") else [])
    assert [(c.label, c.params) for c in epic] == expected


def test_a_small_run_writes_every_metric_and_plot(tiny_engine, count_tokens, tmp_path):
    engine = tiny_engine("llama")
    questions = QAGenerator(count_tokens, seed=0).questions(2, 3, 60, two_hop_fraction=0.5, indirect_bridge_fraction=1.0)
    configs = method_configs(["full", "naive", "cacheblend", "epic", "snapkv", "samkv"], [0.15],
                             ablations=["recompute=False"])
    assert configs[0].label == "full"
    dropped = []
    records = run_questions(engine, questions, configs, max_new_tokens=3, before_generate=lambda: dropped.append(1))
    assert len(records) == len(dropped) == 2 * len(configs)
    for record in records:
        # Every stage time the engine reports is kept, and opening the source counts towards TTFT.
        assert {"ttft_ms", "select_ms", "open_ms", "total_ms"} <= set(record)
        assert record["ttft_ms"] >= record["open_ms"]
        assert "\n" not in record["answer"]
    rows = summarise(records, configs)
    files = write_report(tmp_path, rows, records, {"command": "test", "questions": 2})
    results = json.loads((tmp_path / "results.json").read_text())["results"]
    assert {r["label"] for r in results} == {c.label for c in configs}
    for row in results:
        assert RESULT_FIELDS <= set(row)
        assert set(row["by_kind"]) == {"single", "two-hop"}
        assert set(row["by_variant"]) == {q.variant for q in questions} == {"plain", "indirect-short"}
        assert ("vs_full" in row) == (row["label"] != "full")
    full = next(r for r in results if r["label"] == "full")
    assert full["agreement_with_full"] == 100.0 and full["ttft_share_of_full"] == 1.0
    assert full["by_variant"]["indirect-short"]["ttft_share_of_full"] == 1.0  # each split against full's same split
    assert full["answer_kept"] == 100.0  # the generated answers are in the context, and full keeps it all
    sparse = next(r for r in results if r["label"] == "samkv@0.15")
    assert sparse["kv_decode_share_of_full"] < 1.0
    assert sparse["vs_full"]["questions"] == 2
    markdown = (tmp_path / "results.md").read_text()
    assert "samkv[recompute=False]@0.15" in markdown
    for heading in ("## Against full", "## Stage times", "## kind: two-hop", "## variant: indirect-short"):
        assert heading in markdown
    assert {f.name for f in files} >= {"quality_vs_keep_ratio.png", "ttft.png", "kv_bytes.png", "summary.png"}
    assert all(f.stat().st_size > 0 for f in files)


def test_the_bench_command_records_split_seed_and_a_cold_disk_tier(tiny_checkpoint, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = tmp_path / "run"
    args = parser.parse_args([
        "--model", str(tiny_checkpoint("llama")), "--device", "cpu", "--questions", "2", "--docs", "3",
        "--doc-tokens", "60", "--two-hop-fraction", "0.5", "--indirect-bridge-fraction", "1", "--prose",
        "--methods", "full,samkv", "--ablations", "", "--max-new-tokens", "4", "--split", "test",
        "--out", str(out),
    ])
    assert args.model == str(tiny_checkpoint("llama"))
    assert parser.parse_args([]).model == "qwen2.5-coder-0.5b-instruct"
    assert run(args) == 0
    meta = json.loads((out / "results.json").read_text())["meta"]
    assert (meta["split"], meta["seed"], meta["cache_tier"], meta["cache_state"]) == ("test", 1000, "disk", "cold")
    assert meta["machine"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert meta["machine"]["cpu"] in (out / "results.md").read_text()
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert {r["variant"] for r in records} == {"prose", "prose+indirect-short"}
    assert "## variant: prose+indirect-short" in capsys.readouterr().out
    selection = tmp_path / "selection"
    assert run(parser.parse_args(["--model", str(tiny_checkpoint("llama")), "--device", "cpu", "--questions", "2",
                                  "--docs", "3", "--doc-tokens", "60", "--methods", "full", "--split", "dev",
                                  "--selection-only", "--out", str(selection)])) == 0
    report = json.loads((selection / "selection.json").read_text())
    assert (report["split"], report["seed"]) == ("dev", 100)
    assert run(parser.parse_args(["--split", "dev", "--seed", "1000"])) == 2
    assert run(parser.parse_args(["--cache-tier", "memory", "--cold"])) == 2
    # A configuration the method refuses stops the run before the model is loaded.
    assert run(parser.parse_args(["--model", "/nonexistent", "--samkv-param", "complement_mode=packet"])) == 2
    assert "samkv[global_budget=False]@0.15: global_budget=False" in capsys.readouterr().err


def test_a_cold_disk_tier_evicts_every_stored_cache(tiny_engine, tmp_path):
    engine = tiny_engine("llama")
    texts = ["The vault code is 4471.", "Lake Sorrel freezes in January."]
    put, source, store = store_source_factory("disk", engine, tmp_path, "redis://127.0.0.1:6379/0")
    put(engine.encode_documents(texts), texts)
    assert store.drop_page_cache() == len(texts)
    assert len(source([]).documents) == len(texts)  # still readable after the eviction
    store.close()


def test_selection_only_judges_what_each_configuration_keeps(tiny_engine, count_tokens):
    engine = tiny_engine("llama")
    questions = QAGenerator(count_tokens, seed=0).questions(4, 3, 60, two_hop_fraction=0.5)
    two_hop = next(q for q in questions if q.kind == "two-hop")
    assert two_hop.bridge and all(two_hop.bridge in two_hop.documents[i] for i in two_hop.gold_documents)
    configs = method_configs(["full", "samkv"], [0.15], ablations=[])
    records = select_questions(engine, questions, configs)
    assert len(records) == len(questions) * len(configs)
    full = [r for r in records if r["label"] == "full"]
    assert all(r["answer_kept"] == 1.0 for r in full)
    assert [r["bridge_kept"] for r in full if r["kind"] == "two-hop"] == [1.0, 1.0]
    assert all(r["bridge_kept"] is None for r in records if r["kind"] == "single")
    sparse = [r for r in records if r["label"] == "samkv@0.15"]
    assert all(r["kept_tokens"] < r["context_tokens"] for r in sparse)
    rows = summarise_selection(records, configs)
    assert {(r["label"], r["group"]) for r in rows} == {
        (c.label, group) for c in configs for group in ("all", "single", "two-hop", "plain")
    }
    table = selection_table(rows)
    assert "| full | 4 | all | 100.0 | 100.0 |" in table


def test_an_interrupted_run_reports_what_it_finished_and_resumes_from_there(
    tiny_checkpoint, tmp_path, monkeypatch, capsys
):
    from app.bench import runner

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = tmp_path / "run"
    flags = ["--model", str(tiny_checkpoint("llama")), "--device", "cpu", "--questions", "3", "--docs", "2",
             "--doc-tokens", "40", "--methods", "full,naive", "--ablations", "", "--max-new-tokens", "3",
             "--split", "dev", "--out", str(out)]
    real = runner.run_questions

    def stopped_at_the_third_record(*args, on_step, **kwargs):
        made = []

        def step(record):
            if len(made) == 2:
                raise KeyboardInterrupt
            made.append(record)
            on_step(record)

        return real(*args, on_step=step, **kwargs)

    monkeypatch.setattr(runner, "run_questions", stopped_at_the_third_record)
    assert run(parser.parse_args(flags)) == 0
    meta = json.loads((out / "results.json").read_text())["meta"]
    assert (meta["questions"], meta["questions_planned"]) == (1, 3)
    assert "Interrupted: 1 of the 3 questions planned" in (out / "results.md").read_text()
    first = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert [(r["question_index"], r["label"]) for r in first] == [(0, "full"), (0, "naive")]

    monkeypatch.setattr(runner, "run_questions", real)
    assert run(parser.parse_args([*flags, "--max-new-tokens", "4", "--resume"])) == 2
    assert "max_new_tokens" in capsys.readouterr().err
    assert run(parser.parse_args([*flags, "--resume"])) == 0
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert [r["question_index"] for r in records] == [0, 0, 1, 1, 2, 2]
    assert records[:2] == first
    assert not (out / "records.partial.jsonl").exists() and not (out / "run.json").exists()
    assert run(parser.parse_args([*flags, "--resume"])) == 2
