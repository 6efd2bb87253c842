"""The benchmark harness: generated data, the LongBench loader, metrics, and a small end-to-end run."""

from __future__ import annotations

import itertools
import json

import pytest

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
from app.bench.runner import method_configs, run_questions, summarise
from app.bench.selection import select_questions, selection_table, summarise_selection

RESULT_FIELDS = {
    "method", "keep_ratio", "exact_match", "f1", "answer_logprob", "agreement_with_full", "ttft_ms_median",
    "ttft_ms_p90", "decode_tokens_per_s", "kv_bytes_decode", "kv_bytes_peak", "recomputed_tokens",
}


@pytest.fixture(scope="module")
def count_tokens(embedded_tokenizer):
    return lambda text: len(embedded_tokenizer(text, add_special_tokens=False)["input_ids"])


def test_generator_is_deterministic_and_hides_each_answer_in_its_gold_documents(count_tokens):
    first = QAGenerator(count_tokens, seed=3).questions(12, 5, 120, two_hop_fraction=0.5)
    second = QAGenerator(count_tokens, seed=3).questions(12, 5, 120, two_hop_fraction=0.5)
    assert first == second
    assert first != QAGenerator(count_tokens, seed=4).questions(12, 5, 120, two_hop_fraction=0.5)
    assert sum(q.kind == "two-hop" for q in first) == 6
    for item in first:
        assert len(item.documents) == 5
        assert all(110 <= count_tokens(doc) <= 160 for doc in item.documents)
        holders = [i for i, doc in enumerate(item.documents) if item.answers[0] in doc]
        if item.kind == "single":
            assert holders == list(item.gold_documents)
        else:
            # The answer sits only in the second hop's document, which the question cannot name:
            # only the other gold document mentions the person the question asks about.
            assert len(item.gold_documents) == 2 and len(holders) == 1
            (first_hop,) = set(item.gold_documents) - set(holders)
            person = next(name for name in _names(item.question) if name in item.documents[first_hop])
            assert person not in item.documents[holders[0]]


def test_distractors_never_state_the_asked_attribute(count_tokens):
    """Only the gold document says anyone's locker code / sheep count / ...: a lookup, not a guess
    between near-identical sentences about different people."""
    date, town, job = ("born", "birth"), ("lives in", "home town", "house in"), ("works as", "profession", "living as")
    markers = {"locker": ("locker",), "sheep": ("sheep",), "flock": ("sheep",), "rowing": ("rowing club",),
               "born": date, "birth": date, "town": town, "live": town, "work": job, "job": job, "profession": job}
    for item in QAGenerator(count_tokens, seed=5).questions(16, 6, 150):
        marker = next(m for key, m in markers.items() if key in item.question)
        stating = [i for i, doc in enumerate(item.documents) if any(phrase in doc for phrase in marker)]
        assert stating == list(item.gold_documents), (item.question, marker)


def _names(question: str) -> list[str]:
    words = question.rstrip("?").split()
    return [f"{a} {b}" for a, b in itertools.pairwise(words) if a[:1].isupper() and b[:1].isupper()]


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


def test_a_small_run_writes_every_metric_and_plot(tiny_engine, count_tokens, tmp_path):
    engine = tiny_engine("llama")
    questions = QAGenerator(count_tokens, seed=0).questions(2, 3, 60, two_hop_fraction=0.5)
    configs = method_configs(["full", "naive", "cacheblend", "epic", "snapkv", "samkv"], [0.15, 0.5],
                             ablations=["recompute=False", "global_budget=False"])
    assert configs[0].label == "full"
    records = run_questions(engine, questions, configs, max_new_tokens=3)
    assert len(records) == 2 * len(configs)
    rows = summarise(records, configs)
    files = write_report(tmp_path, rows, records, {"command": "test", "questions": 2})
    results = json.loads((tmp_path / "results.json").read_text())["results"]
    assert {r["label"] for r in results} == {c.label for c in configs}
    for row in results:
        assert RESULT_FIELDS <= set(row)
        assert set(row["by_kind"]) == {"single", "two-hop"}
    full = next(r for r in results if r["label"] == "full")
    assert full["agreement_with_full"] == 100.0 and full["ttft_share_of_full"] == 1.0
    assert full["answer_kept"] == 100.0  # the generated answers are in the context, and full keeps it all
    sparse = next(r for r in results if r["label"] == "samkv@0.15")
    assert sparse["kv_decode_share_of_full"] < 1.0
    assert 0.0 <= sparse["answer_kept"] <= 100.0
    assert "samkv[recompute=False]@0.15" in (tmp_path / "results.md").read_text()
    assert {f.name for f in files} >= {"quality_vs_keep_ratio.png", "ttft.png", "kv_bytes.png", "summary.png"}
    assert all(f.stat().st_size > 0 for f in files)


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
    assert {(r["label"], r["kind"]) for r in rows} == {
        (c.label, kind) for c in configs for kind in ("all", "single", "two-hop")
    }
    table = selection_table(rows)
    assert "| full | 4 | all | 100.0 | 100.0 |" in table
