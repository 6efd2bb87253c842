"""A seeded generator of multi-document QA: single-fact lookups among distractors, and two-hop
questions whose bridge entity links two documents.

Every question carries its kind ("single", "two-hop") and its variant: "plain", or the
"+"-joined tags of what makes it harder: "prose" (facts inside real news paragraphs instead of
template filler), "confusers" (other documents state the asked attribute for other people and
organisations, and people share the asked person's first or last name), "indirect-<form>" (the
second hop's document names the bridge by a short form, a description, or a pronoun after its
first mention). With none of these options a seed regenerates the same questions as before they
existed.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from app.bench.facts import (
    BRIDGE_FORMS,
    FILLER,
    FIRST,
    JOBS,
    LAST,
    LOCATED,
    LOCATED_AFTER_MENTION,
    MONTHS,
    ORG_FILLER,
    ORG_KIND,
    ORG_NAME,
    TOWN_A,
    TOWN_B,
    Person,
    fact_sentences,
    mentions,
)
from app.bench.prose import ProseCorpus


@dataclass(frozen=True)
class Question:
    """One benchmark item: a question, its documents in prompt order, and accepted answers."""

    question: str
    documents: tuple[str, ...]
    answers: tuple[str, ...]  # the gold answer first, then aliases
    kind: str  # "single" or "two-hop"
    gold_documents: tuple[int, ...] = field(default=())
    bridge: str = ""  # two-hop: the name that links the question's document to the answer's
    variant: str = "plain"  # see the module's docstring


def _spread(index: int, total: int, chosen: int) -> bool:
    """Whether item `index` of `total` is one of `chosen` items spread evenly over them."""
    return total > 0 and (index + 1) * chosen // total > index * chosen // total


class QAGenerator:
    """Deterministic (seeded) generator; documents are padded to about `doc_tokens` model tokens.

    With `prose`, documents are paragraphs of that corpus with the facts placed among their
    sentences; without it, facts sit among template filler sentences.
    """

    def __init__(self, count_tokens: Callable[[str], int], seed: int = 0, prose: ProseCorpus | None = None) -> None:
        self.count_tokens = count_tokens
        self.rng = random.Random(seed)
        self.prose = prose
        self._used: set[str] = set()
        self._answers: tuple[str, ...] = ()  # the current question's; prose stating them is skipped

    def _unique(self, make: Callable[[], str]) -> str:
        for _ in range(10_000):
            value = make()
            if value not in self._used:
                self._used.add(value)
                return value
        raise RuntimeError("the generator ran out of distinct names; use fewer documents per question")

    def _person(self, first: str | None = None, last: str | None = None) -> Person:
        """A new person; `first` or `last` fixes that part of the name (a namesake)."""
        r = self.rng
        return Person(
            name=self._unique(lambda: f"{first or r.choice(FIRST)} {last or r.choice(LAST)}"),
            town=self._unique(lambda: r.choice(TOWN_A) + r.choice(TOWN_B)),
            code=self._unique(lambda: str(r.randint(1000, 9999))),
            year=str(r.randint(1950, 2020)),
            date=f"{r.randint(1, 28)} {r.choice(MONTHS)} {r.randint(1940, 2005)}",
            count=str(r.randint(12, 480)),
            job=r.choice(JOBS),
        )

    def _fill(self, facts: list[str], filler: list[str], doc_tokens: int) -> str:
        """The facts in a document of about doc_tokens tokens, among prose or template filler."""
        return self._pad(facts, filler, doc_tokens) if self.prose is None else self._prose(facts, doc_tokens)

    def _prose(self, facts: list[str], doc_tokens: int) -> str:
        """Consecutive sentences of a corpus article, from its start, with the facts inserted
        among them; sentences that state one of the question's answers are skipped."""
        prose: list[str] = []
        for sentence in self.prose.sentences_from(self.rng.randrange(len(self.prose))):
            if self.count_tokens(" ".join(facts + prose)) >= doc_tokens:
                break
            if not any(mentions(sentence, answer) for answer in self._answers):
                prose.append(sentence)
        for fact in facts:
            prose.insert(self.rng.randint(0, len(prose)), fact)
        return " ".join(prose)

    def _pad(self, sentences: list[str], filler: list[str], doc_tokens: int) -> str:
        """Facts placed among filler sentences until the text reaches about doc_tokens tokens."""
        pool = list(filler)
        self.rng.shuffle(pool)
        body = list(sentences)
        text = " ".join(body)
        index = 0
        while self.count_tokens(text) < doc_tokens:
            body.insert(self.rng.randint(0, len(body)), pool[index % len(pool)])
            index += 1
            text = " ".join(body)
        return text

    def _person_document(
        self, person: Person, doc_tokens: int, extra: list[str] = (), without: str | None = None
    ) -> str:
        """A person's facts among filler; `without` names an attribute left out."""
        facts = [self.rng.choice(phrasings) for attribute, (phrasings, _, _) in fact_sentences(person).items()
                 if attribute != without]
        filler = [f.format(name=person.name) for f in FILLER]
        return self._fill(list(extra) + facts, filler, doc_tokens)

    def single(self, docs: int, doc_tokens: int, confusers: bool = False) -> Question:
        """A lookup of one attribute of one person; with `confusers`, the other documents state
        that attribute for other people, the first two of them namesakes of the asked person."""
        self._used.clear()  # names need only be distinct within one question's documents
        person = self._person()
        attribute = self.rng.choice(list(fact_sentences(person)))
        _, questions, answers = fact_sentences(person)[attribute]
        self._answers = answers
        gold = self._person_document(person, doc_tokens)
        if confusers:
            distractors = self._namesakes(docs - 1, doc_tokens, person, answers)
        else:
            distractors = self._distractors(docs - 1, doc_tokens, answers, attribute)
        return self._assemble(self.rng.choice(questions), [gold], distractors, answers, "single",
                              variant=self._variant(confusers))

    def _variant(self, confusers: bool, bridge_form: str | None = None) -> str:
        tags = ["prose"] * (self.prose is not None) + ["confusers"] * confusers
        tags += [f"indirect-{bridge_form}"] if bridge_form else []
        return "+".join(tags) or "plain"

    def _namesakes(self, count: int, doc_tokens: int, person: Person, answers: tuple[str, ...]) -> list[str]:
        """Documents about other people, each stating every attribute (the asked one included,
        with another value); the first shares the asked person's first name, the second their
        last name."""
        first, last = person.name.split(" ")
        documents: list[str] = []
        while len(documents) < count:
            shared = [{"first": first}, {"last": last}][len(documents)] if len(documents) < 2 else {}
            document = self._person_document(self._person(**shared), doc_tokens)
            if not any(mentions(document, answer) for answer in answers):
                documents.append(document)
        return documents

    def _distractors(self, count: int, doc_tokens: int, answers: tuple[str, ...], asked: str) -> list[str]:
        """Documents about other people that never state the asked attribute nor contain the answer.

        Stating the same attribute of someone else would turn a lookup into name disambiguation
        among near-identical sentences, which the embedded model fails even with the full prompt.
        """
        documents: list[str] = []
        while len(documents) < count:
            document = self._person_document(self._person(), doc_tokens, without=asked)
            if not any(answer in document for answer in answers):
                documents.append(document)
        return documents

    def _org(self) -> str:
        r = self.rng
        return self._unique(lambda: f"{r.choice(ORG_NAME)} {r.choice(ORG_KIND)}")

    def _town(self) -> str:
        r = self.rng
        return self._unique(lambda: r.choice(TOWN_A) + r.choice(TOWN_B))

    def _director_document(self, person: Person, org: str, doc_tokens: int, without: str | None = "town") -> str:
        link = self.rng.choice([f"{person.name} is the director of the {org}.",
                                f"The {org} is run by its director, {person.name}.",
                                f"{person.name} has directed the {org} for years."])
        return self._person_document(person, doc_tokens, extra=[link], without=without)

    def _org_document(self, org: str, town: str, doc_tokens: int, bridge_form: str | None = None) -> str:
        """The organisation's document, which holds its town; `bridge_form` names it otherwise
        than verbatim: by its short form ("the Harlow"), a description ("the museum that bears
        the Harlow name"), or in full once and then as "it" and "the museum"."""
        name, kind = org.split(" ")
        if bridge_form == "pronoun":
            located = self.rng.choice(LOCATED_AFTER_MENTION).format(org=org, town=town)
            return self._fill([located], [f.format(org=kind.lower()) for f in ORG_FILLER], doc_tokens)
        called = {None: org, "short": name, "description": f"{kind.lower()} that bears the {name} name"}[bridge_form]
        located = self.rng.choice(LOCATED).format(org=called, town=town)
        return self._fill([located], [f.format(org=called) for f in ORG_FILLER], doc_tokens)

    def two_hop(self, docs: int, doc_tokens: int, confusers: bool = False, bridge_form: str | None = None) -> Question:
        """The question names a person; their document names the organisation they manage (the
        bridge); the organisation's document holds the town the question asks for.

        With `confusers`, the other documents are a namesake directing another organisation,
        that organisation's document with its town, and people whose home towns are stated.
        `bridge_form` (one of BRIDGE_FORMS) names the bridge in the second document otherwise.
        """
        self._used.clear()
        r = self.rng
        person = self._person()
        org = self._org()
        town = self._town()
        self._answers = (town,)
        first = self._director_document(person, org, doc_tokens)
        if bridge_form is None:
            located = r.choice([f"The {org} is located in {town}.", f"The {org} stands in the town of {town}.",
                                f"Visitors find the {org} in {town}."])
            second = self._fill([located], [f.format(org=org) for f in ORG_FILLER], doc_tokens)
        else:
            second = self._org_document(org, town, doc_tokens, bridge_form)
        question = r.choice([f"In which town is the organisation directed by {person.name}?",
                             f"Where is the place that {person.name} directs located?",
                             f"In what town does {person.name} work as a director?"])
        if confusers:
            distractors = self._competing_chains(docs - 2, doc_tokens, person)
        else:
            distractors = self._distractors(docs - 2, doc_tokens, (town,), "town")
        return self._assemble(question, [first, second], distractors, (town,), "two-hop", bridge=org,
                              variant=self._variant(confusers, bridge_form))

    def _competing_chains(self, count: int, doc_tokens: int, person: Person) -> list[str]:
        """Namesakes of the asked person who direct other organisations, those organisations'
        documents with their towns, and other people with their home towns, in turn."""
        first, last = person.name.split(" ")
        documents: list[str] = []
        namesakes = 0
        org = ""
        while len(documents) < count:
            turn = len(documents) % 3
            if turn == 0:
                org = self._org()
                shared = {"first": first} if namesakes % 2 == 0 else {"last": last}
                namesakes += 1
                documents.append(self._director_document(self._person(**shared), org, doc_tokens, without=None))
            elif turn == 1:
                documents.append(self._org_document(org, self._town(), doc_tokens))
            else:
                documents.append(self._person_document(self._person(), doc_tokens))
        return documents

    def _assemble(
        self, question: str, gold: list[str], distractors: list[str], answers: tuple[str, ...], kind: str,
        bridge: str = "", variant: str = "plain",
    ) -> Question:
        documents = gold + distractors
        order = list(range(len(documents)))
        self.rng.shuffle(order)
        shuffled = tuple(documents[i] for i in order)
        gold_positions = tuple(sorted(order.index(i) for i in range(len(gold))))
        return Question(question, shuffled, answers, kind, gold_positions, bridge, variant)

    def padded(self, item: Question, context_tokens: int, doc_tokens: int) -> Question:
        """`item` with filler documents of about `doc_tokens` tokens (the last one shorter)
        inserted among its own until its documents hold about `context_tokens` tokens.

        The question's documents, their order and its evidence stay as they are; a filler
        document states no fact (other people's pastimes, or corpus prose with `prose`) and
        never an answer, so only the context's length changes.
        """
        self._answers = item.answers
        documents = list(item.documents)
        gold = set(item.gold_documents)
        missing = context_tokens - sum(self.count_tokens(document) for document in documents)
        # A shorter remainder than this is left out: the sentence granularity would overshoot it.
        while missing > min(32, doc_tokens):
            filler = self._filler_document(min(doc_tokens, missing), item.question)
            missing -= self.count_tokens(filler)
            position = self.rng.randint(0, len(documents))
            gold = {index + (index >= position) for index in gold}
            documents.insert(position, filler)
        return Question(item.question, tuple(documents), item.answers, item.kind, tuple(sorted(gold)),
                        item.bridge, item.variant)

    def _filler_document(self, doc_tokens: int, question: str) -> str:
        """A document of about `doc_tokens` tokens that states no fact and no current answer,
        about someone the question does not name."""
        while True:
            # Names may repeat across filler documents: none of them says anything to confuse.
            name = f"{self.rng.choice(FIRST)} {self.rng.choice(LAST)}"
            document = self._fill([], [f.format(name=name) for f in FILLER], doc_tokens)
            if name not in question and not any(mentions(document, answer) for answer in self._answers):
                return document

    def questions(
        self, count: int, docs: int, doc_tokens: int, two_hop_fraction: float = 0.0,
        confuser_fraction: float = 0.0, indirect_bridge_fraction: float = 0.0,
    ) -> list[Question]:
        """`count` questions, the first round(count × two_hop_fraction) of them two-hop, then shuffled.

        round(n × confuser_fraction) of the n questions of each kind, spread over them, have
        confusers; the first round(n × indirect_bridge_fraction) two-hop questions name their
        bridge indirectly, the forms taking turns.
        """
        if docs < 1 or (two_hop_fraction > 0 and docs < 2):
            raise ValueError("two-hop questions need at least 2 documents per question")
        for name, value in (("two_hop_fraction", two_hop_fraction), ("confuser_fraction", confuser_fraction),
                            ("indirect_bridge_fraction", indirect_bridge_fraction)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        two_hop = round(count * two_hop_fraction)
        indirect = round(two_hop * indirect_bridge_fraction)
        items = [self.two_hop(docs, doc_tokens, _spread(i, two_hop, round(two_hop * confuser_fraction)),
                              BRIDGE_FORMS[i % len(BRIDGE_FORMS)] if i < indirect else None)
                 for i in range(two_hop)]
        single = count - two_hop
        items += [self.single(docs, doc_tokens, _spread(i, single, round(single * confuser_fraction)))
                  for i in range(single)]
        self.rng.shuffle(items)
        return items
