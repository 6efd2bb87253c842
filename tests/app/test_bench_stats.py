"""The protocol's pieces on constructed inputs: paired statistics, the first-sentence cut, the
seed splits, and the aggregation of records into report rows."""

from __future__ import annotations

import pytest

from app.bench.protocol import SPLITS, resolve_seed, split_of
from app.bench.report import comparison_table, stage_table
from app.bench.runner import MethodConfig
from app.bench.sentences import cut_answer, first_sentence, first_sentence_ended, split_sentences
from app.bench.stats import mcnemar_exact, mean_difference_ci, paired_comparison
from app.bench.summary import aggregate, summarise


def test_a_consistent_gain_gives_an_interval_above_zero():
    # Better on 12 of 40 questions, never worse: the mean difference is 0.3 and surely positive.
    method, full = [1.0] * 12 + [0.0] * 28, [0.0] * 40
    mean, low, high = mean_difference_ci(method, full)
    assert mean == pytest.approx(0.3)
    assert 0.0 < low < 0.3 < high <= 0.5


def test_balanced_wins_and_losses_give_an_interval_around_zero():
    method, full = [1.0, 0.0] * 20, [0.0, 1.0] * 20
    mean, low, high = mean_difference_ci(method, full)
    assert mean == 0.0
    assert -0.5 < low < 0.0 < high < 0.5


def test_the_interval_is_paired_not_two_sample():
    # Both score the same on every question: unpaired resampling would see a wide spread of
    # differences; paired resampling sees none.
    scores = [0.0, 0.25, 0.5, 0.75, 1.0] * 8
    assert mean_difference_ci(scores, scores) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="equal, non-zero lengths"):
        mean_difference_ci([1.0], [1.0, 0.0])


def test_mcnemar_exact_test_counts_discordant_pairs():
    assert mcnemar_exact([1] * 10 + [0] * 5, [0] * 10 + [0] * 5) == {"better": 10, "worse": 0,
                                                                     "p_value": pytest.approx(2 * 0.5**10)}
    assert mcnemar_exact([1, 0] * 5, [0, 1] * 5)["p_value"] == pytest.approx(1.0)
    # 1 better / 6 worse: two-sided binomial p = 2 × P(X ≤ 1 | n=7) = 2 × 8/128.
    assert mcnemar_exact([1] + [0] * 6, [0] + [1] * 6)["p_value"] == pytest.approx(0.125)
    assert mcnemar_exact([1, 1], [1, 1]) == {"better": 0, "worse": 0, "p_value": 1.0}


def _record(index: int, label: str, em: float, **extra) -> dict:
    record = {"question_index": index, "label": label, "kind": "single", "variant": "plain",
              "exact_match": em, "contains_match": em, "f1": em, "answer_logprob": -1.0,
              "agrees_with_full": None, "answer_kept": None, "hit_limit": 0.0, "ttft_ms": 100.0,
              "tokens_per_s": 5.0, "kv_bytes_decode": 10, "kv_bytes_peak": 20, "recomputed_tokens": 0,
              "kept_tokens": 5, "context_tokens": 10}
    return {**record, **extra}


def test_comparisons_pair_records_by_question_not_by_order():
    full = [_record(i, "full", float(i % 2)) for i in range(6)]
    method = list(reversed([_record(i, "m", float(i % 2)) for i in range(6)]))
    comparison = paired_comparison(method, full)
    assert comparison["questions"] == 6
    assert comparison["exact_match_diff"] == 0.0 and comparison["exact_match_diff_ci"] == [0.0, 0.0]
    assert comparison["exact_match_test"] == {"better": 0, "worse": 0, "p_value": 1.0}


def test_aggregation_gives_exact_shares_over_the_judged_records():
    records = [
        _record(0, "m", 1.0, answer_kept=1.0, hit_limit=1.0, agrees_with_full=1.0, ttft_ms=100.0, select_ms=4.0),
        _record(1, "m", 0.0, answer_kept=0.0, agrees_with_full=0.0, ttft_ms=300.0, select_ms=8.0),
        _record(2, "m", 1.0, answer_kept=None, agrees_with_full=1.0, ttft_ms=200.0, select_ms=6.0),
        _record(3, "m", 1.0, answer_kept=1.0, agrees_with_full=1.0, ttft_ms=400.0),
    ]
    row = aggregate(records)
    assert row["exact_match"] == 75.0
    assert row["answer_kept"] == pytest.approx(200 / 3)  # the record without the answer is not judged
    assert row["agreement_with_full"] == 75.0
    assert row["hit_limit"] == 25.0
    assert row["ttft_ms_median"] == 250.0 and row["ttft_ms_p90"] == 400.0
    assert row["stage_ms_median"] == {"select_ms": 6.0, "ttft_ms": 250.0}


def test_rows_split_by_kind_and_variant_with_their_own_comparisons():
    full = [_record(i, "full", 0.0, kind="single" if i < 4 else "two-hop",
                    variant="plain" if i % 2 else "prose") for i in range(8)]
    method = [{**r, "label": "m@0.5", "exact_match": 1.0 if r["kind"] == "single" else 0.0} for r in full]
    configs = [MethodConfig("full", "full", 1.0), MethodConfig("m@0.5", "m", 0.5)]
    rows = summarise(full + method, configs)
    assert "vs_full" not in rows[0]
    sparse = rows[1]
    assert sparse["vs_full"]["exact_match_test"] == {"better": 4, "worse": 0, "p_value": pytest.approx(0.125)}
    assert sparse["by_kind"]["single"]["exact_match"] == 100.0
    assert sparse["by_kind"]["two-hop"]["vs_full"]["exact_match_diff"] == 0.0
    assert sparse["by_variant"]["prose"]["questions"] == 4
    table = comparison_table(rows)
    assert "| m@0.5 | 8 | +50.0 [" in table and "| 4 / 0 | 0.125 |" in table
    assert "| m@0.5 | 4 | +100.0 [+100.0, +100.0]" in comparison_table(rows, "kind", "single")
    assert stage_table(rows).splitlines()[0] == "| method | ttft |"
    staged = [{"label": "m", "stage_ms_median": {"ttft_ms": 9.0, "decode_ms": 2.0, "select_ms": 4.0, "open_ms": 1.0}}]
    # Pipeline order first, then any other stage by name.
    assert stage_table(staged).splitlines()[::2] == ["| method | open | select | ttft | decode |", "| m | 1 | 4 | 9 | 2 |"]


@pytest.mark.parametrize(("text", "expected"), [
    (" Velvik. Ilse Brandt lives there.", ("Velvik.", True)),
    ("\nVelvik\nThe second line", ("Velvik", True)),
    ("It grew 3.5 percent. Then it fell.", ("It grew 3.5 percent.", True)),
    ("J. Smith directs it. He is", ("J. Smith directs it.", True)),
    ("It is in St. Ives, near the coast", ("It is in St. Ives, near the coast", False)),
    ("the town of Velvik.", ("the town of Velvik.", True)),
    ('"Velvik." Then', ('"Velvik."', True)),
    ("a glassblower", ("a glassblower", False)),
    ("", ("", False)),
])
def test_answers_are_cut_after_their_first_sentence_or_line(text, expected):
    assert first_sentence(text) == expected


def test_an_answer_hits_the_limit_only_when_it_never_ended():
    assert cut_answer("Velvik, a small town in the", 32, 32) == ("Velvik, a small town in the", True)
    assert cut_answer("Velvik. It is a small town in the", 32, 32) == ("Velvik.", False)
    assert cut_answer("Velvik", 3, 32) == ("Velvik", False)  # decoding ended on its own


def test_corpus_paragraphs_split_at_sentence_ends_only():
    paragraph = 'He met J. Smith at St. Ives. Growth was 3.5% in May. "It is done." Then Mr. Brown left! Why? Yes.'
    assert split_sentences(paragraph) == [
        "He met J. Smith at St. Ives.", "Growth was 3.5% in May.", '"It is done."', "Then Mr. Brown left!", "Why?",
        "Yes.",
    ]


def test_seed_splits_keep_dev_and_test_apart():
    assert set(SPLITS["dev"]).isdisjoint(SPLITS["test"])
    assert resolve_seed("test", None) == ("test", 1000)
    assert resolve_seed("dev", 142) == ("dev", 142)
    assert resolve_seed(None, None) == ("scratch", 0)
    assert resolve_seed(None, 1005) == ("test", 1005)
    assert split_of(7) == "scratch"
    with pytest.raises(ValueError, match="seed 1000 is not a dev seed"):
        resolve_seed("dev", 1000)


@pytest.mark.parametrize(("text", "ended"), [
    ("1993.", False),  # may still become "1993.5" or go on
    (" 3.5 units", False),
    ("J. Smith", False),
    ("Velvik. It", True),
    ("Velvik\n", True),
    ("\n Velvik", False),  # leading whitespace is not the answer's line break
])
def test_decoding_stops_once_the_first_sentence_has_surely_ended(text, ended):
    assert first_sentence_ended(text) is ended

