"""bench-compare: configurations of two run folders paired on the questions both answered."""

from __future__ import annotations

import json

import pytest

from app.bench.commands import run_command


def _write_run(folder, label, outcomes, answers, first=0, planned=8):
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"split": "test", "seed": 1000, "questions_planned": planned, "docs": 6}
    (folder / "results.json").write_text(json.dumps({"meta": meta, "results": []}))
    with (folder / "records.jsonl").open("w") as handle:
        for index, (right, answer) in enumerate(zip(outcomes, answers), start=first):
            record = {"question_index": index, "kind": "single" if index % 2 else "two-hop", "label": label,
                      "answer": answer, "exact_match": float(right), "f1": float(right), "ttft_ms": 100.0 + index}
            handle.write(json.dumps(record) + "\n")


def test_compares_on_the_questions_both_runs_answered(tmp_path, capsys):
    _write_run(tmp_path / "before", "full", [1, 1, 1, 0, 1, 0], ["a", "b", "c", "d", "e", "f"])
    # The later run answered questions 2..7: only 2..5 are shared.
    _write_run(tmp_path / "after", "samkv@0.15", [1, 0, 1, 1, 0, 0], ["c", "x", "e", "y", "g", "h"], first=2)
    out = tmp_path / "table.md"
    code = run_command("bench-compare", [f"{tmp_path / 'before'}:full", f"{tmp_path / 'after'}:samkv@0.15",
                                         "--out", str(out)])
    assert code == 0
    row = next(line for line in out.read_text().splitlines() if line.startswith("| after:samkv@0.15"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    # shared: 2 (1 vs 1, same), 3 (0 vs 0, "x" vs "d"), 4 (1 vs 1, same), 5 (1 vs 0)
    assert cells[1:4] == ["4", "75.0", "50.0"]
    assert cells[4].startswith("+25.0 [")
    assert cells[6] == "1 / 0"
    assert cells[8] == "50.0"  # identical answers
    assert row in capsys.readouterr().out


def test_an_unknown_label_is_a_clear_error(tmp_path, capsys):
    _write_run(tmp_path / "run", "full", [1], ["a"])
    with pytest.raises(SystemExit):
        run_command("bench-compare", [f"{tmp_path / 'run'}:full", f"{tmp_path / 'run'}:samkv"])
    assert "has no records labelled 'samkv'" in capsys.readouterr().err


def test_runs_that_asked_other_questions_are_not_paired(tmp_path, capsys):
    _write_run(tmp_path / "a", "full", [1, 0], ["a", "b"], planned=150)
    _write_run(tmp_path / "b", "samkv", [1, 0], ["a", "b"], planned=120)
    assert run_command("bench-compare", [f"{tmp_path / 'a'}:full", f"{tmp_path / 'b'}:samkv"]) == 2
    assert "questions_planned 150 against 120" in capsys.readouterr().err
