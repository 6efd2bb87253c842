"""The question generator's variants: each really contains what its name promises, and the
original kinds regenerate byte for byte under their seed."""

from __future__ import annotations

import hashlib
import itertools
import json

import pytest

from app.bench.facts import BRIDGE_FORMS, mentions
from app.bench.generator import QAGenerator
from app.bench.prose import ProseCorpus
from app.bench.sentences import split_sentences


def words(text: str) -> int:
    """A token count that no model change can move, for the regeneration digests."""
    return len(text.split())


def _digest(questions) -> str:
    fields = [(q.question, q.documents, q.answers, q.kind, q.gold_documents, q.bridge) for q in questions]
    return hashlib.sha256(json.dumps(fields).encode()).hexdigest()


@pytest.mark.parametrize(("seed", "count", "docs", "doc_tokens", "two_hop", "digest"), [
    (0, 12, 6, 120, 0.25, "10ce4f3d8433a5bb2f2fa8f982e1faebf4fb167174302ca5fa24595351ec39ac"),
    (7, 9, 8, 200, 0.5, "e50e8dd902d9ab5a789e842e504a037a7cb676a7bb658025d809983cd6fc60a1"),
    (3, 5, 3, 60, 0.0, "3f8a237632f442c2251ebc9c5454110751030a567f39750b7c82e27fb1cdefa0"),
])
def test_the_original_kinds_regenerate_byte_for_byte(seed, count, docs, doc_tokens, two_hop, digest):
    # The digests were taken from the generator as it was before prose, confusers and indirect
    # bridges existed: earlier runs' questions stay reproducible from their seed.
    questions = QAGenerator(words, seed=seed).questions(count, docs, doc_tokens, two_hop)
    assert _digest(questions) == digest
    assert {q.variant for q in questions} == {"plain"}


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


@pytest.fixture(scope="module")
def corpus():
    return ProseCorpus.load()


def test_the_prose_corpus_is_the_shipped_news_articles(corpus):
    assert len(corpus) == 2225
    first = corpus.articles[0]
    assert all(sentence[0].isupper() or sentence[0] in "\"'£$0123456789" for sentence in first)
    assert sum(len(article) for article in corpus.articles) > 40_000


def test_prose_documents_place_every_fact_among_corpus_sentences(corpus):
    questions = QAGenerator(words, seed=11, prose=corpus).questions(6, 4, 150, two_hop_fraction=0.5)
    corpus_sentences = {s for article in corpus.articles for s in article}
    assert {q.variant for q in questions} == {"prose"}
    for item in questions:
        holders = [i for i, doc in enumerate(item.documents) if mentions(doc, item.answers[0])]
        assert holders == ([i for i in item.gold_documents if item.kind == "single"]
                           or [i for i in item.gold_documents if "located" in item.documents[i]
                               or "stands in" in item.documents[i] or "find the" in item.documents[i]])
        for document in item.documents:
            from_corpus = [s for s in corpus_sentences if s in document]
            assert len(" ".join(from_corpus).split()) >= 60, document


def test_confusers_state_the_asked_attribute_for_namesakes_and_others(corpus):
    questions = QAGenerator(words, seed=5).questions(8, 6, 150, confuser_fraction=1.0)
    assert {q.variant for q in questions} == {"confusers"}
    towns = [q for q in questions if "town" in q.question or "live" in q.question]
    codes = [q for q in questions if "code" in q.question]
    assert towns or codes
    for item in questions:
        asked = next(name for name in _names(item.question))
        first, last = asked.split(" ")
        others = [doc for i, doc in enumerate(item.documents) if i not in item.gold_documents]
        # Every other document is about someone else and states the attribute with another value.
        for doc in others:
            assert asked not in doc and not any(mentions(doc, a) for a in item.answers)
        assert any(f"{first} " in doc for doc in others) and any(f" {last}" in doc for doc in others)
    for item in towns:
        stating = [doc for doc in item.documents if any(p in doc for p in ("lives in", "home town", "house in"))]
        assert len(stating) == len(item.documents)
    for item in codes:
        stating = [doc for doc in item.documents if "locker" in doc]
        assert len(stating) == len(item.documents)


def test_two_hop_confusers_hold_a_competing_chain_with_another_town():
    (item,) = QAGenerator(words, seed=2).questions(1, 8, 150, two_hop_fraction=1.0, confuser_fraction=1.0)
    assert item.variant == "confusers"
    asked = next(name for name in _names(item.question))
    first = asked.split(" ")[0]
    others = [doc for i, doc in enumerate(item.documents) if i not in item.gold_documents]
    namesake_directors = [doc for doc in others if "direct" in doc and f"{first} " in doc]
    assert namesake_directors
    other_org_towns = [doc for doc in others if " is located in " in doc or " stands in the town of " in doc
                       or "Visitors find the " in doc]
    assert len(other_org_towns) == 2  # 6 other documents: director, organisation, person, twice


def test_indirect_bridges_never_repeat_the_bridge_in_the_answer_sentence():
    questions = QAGenerator(words, seed=9).questions(6, 4, 120, two_hop_fraction=1.0, indirect_bridge_fraction=0.5)
    variants = sorted(q.variant for q in questions)
    assert variants == ["indirect-description", "indirect-pronoun", "indirect-short", "plain", "plain", "plain"]
    for item in questions:
        (answer_doc,) = [item.documents[i] for i in item.gold_documents if item.answers[0] in item.documents[i]]
        (link_doc,) = [item.documents[i] for i in item.gold_documents if item.answers[0] not in item.documents[i]]
        assert item.bridge in link_doc
        name, kind = item.bridge.split(" ")
        sentences = split_sentences(answer_doc)
        at = next(i for i, s in enumerate(sentences) if item.answers[0] in s)
        answer_sentence = sentences[at]
        if item.variant == "plain":
            assert item.bridge in answer_sentence
        elif item.variant == "indirect-short":
            assert item.bridge not in answer_doc and f"the {name} " in answer_sentence.lower().replace(
                name.lower(), name)
        elif item.variant == "indirect-description":
            assert item.bridge not in answer_doc
            assert f"{kind.lower()} that bears the {name} name" in answer_sentence
        else:
            assert answer_doc.count(item.bridge) == 1 and answer_sentence.startswith("It ")
            assert sentences[at - 1].startswith(f"The {item.bridge} ")  # the first mention, just before


def test_variant_shares_are_exact_and_forms_take_turns():
    questions = QAGenerator(words, seed=4).questions(
        20, 3, 60, two_hop_fraction=0.5, confuser_fraction=0.4, indirect_bridge_fraction=0.6)
    two_hop = [q for q in questions if q.kind == "two-hop"]
    single = [q for q in questions if q.kind == "single"]
    assert len(two_hop) == len(single) == 10
    assert sum("confusers" in q.variant for q in two_hop) == 4
    assert sum("confusers" in q.variant for q in single) == 4
    forms = [q.variant.rsplit("indirect-", 1)[1] for q in two_hop if "indirect-" in q.variant]
    assert sorted(forms) == sorted([BRIDGE_FORMS[i % 3] for i in range(6)])
    with pytest.raises(ValueError, match="confuser_fraction"):
        QAGenerator(words).questions(2, 3, 60, confuser_fraction=1.5)


def _names(question: str) -> list[str]:
    tokens = question.rstrip("?").split()
    return [f"{a} {b}" for a, b in itertools.pairwise(tokens) if a[:1].isupper() and b[:1].isupper()
            and a not in ("In", "What", "Where", "When", "How", "On", "Which")]
