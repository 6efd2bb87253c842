"""`samkv-rag bench-decode`: both weight settings in one run, their speed ratio and exact match."""

from __future__ import annotations

import argparse
import json

from app.bench.decode import add_arguments, run


def test_the_decoding_comparison_reports_every_setting(tiny_checkpoint, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = tmp_path / "decode"
    assert run(parser.parse_args([
        "--model", str(tiny_checkpoint("llama")), "--device", "cpu", "--rounds", "2", "--new-tokens", "4",
        "--questions", "2", "--docs", "2", "--doc-tokens", "40", "--methods", "full,naive", "--out", str(out),
    ]), "samkv-rag bench-decode (test)") == 0
    report = json.loads((out / "decode.json").read_text())
    assert report["meta"]["command"] == "samkv-rag bench-decode (test)"
    assert (report["meta"]["split"], report["meta"]["seed"]) == ("dev", 100)
    assert [(r["weights"], r["label"]) for r in report["rows"]] == [
        ("float", "full"), ("float", "naive"), ("int8", "full"), ("int8", "naive")]
    assert {len(speeds) for speeds in report["speeds"].values()} == {2}
    assert all(r["questions"] == 2 and r["self_check"] <= 1e-4 for r in report["rows"])
    assert report["rows"][0]["speed_ratio"] == 1.0
    assert all(r["agrees_with_first"] == 100 for r in report["rows"] if r["weights"] == "float")
    assert "| int8 | full |" in capsys.readouterr().out
    assert "| int8 | naive |" in (out / "decode.md").read_text()
    assert report["meta"]["machine"]["cpu"] in (out / "decode.md").read_text()
