"""A seeded generator of multi-document QA: single-fact lookups among distractors, and two-hop
questions whose bridge entity links two documents."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

FIRST = ["Ilse", "Tomas", "Marta", "Oskar", "Nadia", "Pavel", "Greta", "Emil", "Lucia", "Anton",
         "Freya", "Viktor", "Helga", "Jonas", "Selma", "Ruben", "Alma", "Dario", "Katja", "Leon"]
LAST = ["Brandt", "Quint", "Marsk", "Holm", "Varga", "Lindqvist", "Okafor", "Renner", "Castell",
        "Duarte", "Falk", "Moreau", "Novak", "Petrov", "Sandoval", "Tamura", "Weiss", "Yilmaz"]
TOWN_A = ["Vel", "Tol", "Kar", "Brem", "Ost", "Mar", "Sil", "Dun", "Hal", "Rav", "Lun", "Ferr"]
TOWN_B = ["mora", "vik", "stad", "haven", "burg", "wick", "dale", "mouth", "ford", "holm"]
ORG_KIND = ["Hotel", "Museum", "Observatory", "Brewery", "Library", "Theatre", "Shipyard", "Academy"]
ORG_NAME = ["Oriel", "Harlow", "Cinder", "Marrow", "Pell", "Quarry", "Ashby", "Lorne", "Tessel", "Wren"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]
JOBS = ["a ferry pilot", "a glassblower", "a surveyor", "a beekeeper", "a locksmith", "a cartographer",
        "a bookbinder", "a clockmaker", "a stonemason", "a botanist"]
FILLER = [
    "{name} enjoys long walks along the coast on quiet mornings.",
    "Friends describe {name} as patient, careful and curious.",
    "{name} keeps a small garden with herbs and tomatoes.",
    "On weekends {name} often visits the old market square.",
    "{name} learned to sail as a teenager and still sails each summer.",
    "Neighbours say {name} can repair almost anything with simple tools.",
    "{name} reads history books late into the evening.",
    "Every winter {name} travels inland to visit relatives.",
    "{name} plays the cello in an amateur orchestra.",
    "The local newspaper once wrote a short profile of {name}.",
]
ORG_FILLER = [
    "The {org} is popular with visitors in the summer months.",
    "A small cafe stands next to the entrance of the {org}.",
    "The {org} was renovated after a storm damaged its roof.",
    "Guided tours of the {org} start every hour.",
    "The {org} publishes a newsletter four times a year.",
    "Many local schools organise trips to the {org}.",
]


@dataclass(frozen=True)
class Question:
    """One benchmark item: a question, its documents in prompt order, and accepted answers."""

    question: str
    documents: tuple[str, ...]
    answers: tuple[str, ...]  # the gold answer first, then aliases
    kind: str  # "single" or "two-hop"
    gold_documents: tuple[int, ...] = field(default=())
    bridge: str = ""  # two-hop: the name that links the question's document to the answer's


@dataclass(frozen=True)
class _Person:
    name: str
    town: str
    code: str
    year: str
    date: str
    count: str
    job: str


def _fact_sentences(person: _Person) -> dict[str, tuple[list[str], list[str], tuple[str, ...]]]:
    """attribute -> (fact phrasings, question phrasings, gold answers with aliases)."""
    n = person.name
    day, month, year = person.date.split(" ")
    return {
        "town": (
            [f"{n} lives in the town of {person.town}.", f"The home town of {n} is {person.town}.",
             f"{n} has a house in {person.town}."],
            [f"In which town does {n} live?", f"What is the home town of {n}?", f"Where does {n} live?"],
            (person.town,),
        ),
        "code": (
            [f"The locker code of {n} is {person.code}.", f"{n} uses the locker code {person.code}.",
             f"The code for the locker of {n} is {person.code}."],
            [f"What is the locker code of {n}?", f"Which locker code does {n} use?",
             f"What code opens the locker of {n}?"],
            (person.code,),
        ),
        "year": (
            [f"{n} joined the rowing club in {person.year}.", f"In {person.year}, {n} became a member of the rowing club.",
             f"The rowing club admitted {n} in {person.year}."],
            [f"In which year did {n} join the rowing club?", f"When did {n} become a member of the rowing club?",
             f"What year was {n} admitted to the rowing club?"],
            (person.year,),
        ),
        "date": (
            [f"{n} was born on {person.date}.",
             f"{n} celebrates a birthday on {day} {month}, having been born on {person.date}.",
             f"The date of birth of {n} is {person.date}."],
            [f"When was {n} born?", f"What is the date of birth of {n}?", f"On what date was {n} born?"],
            (person.date, f"{day} {month} {year}", f"{month} {day}, {year}"),
        ),
        "count": (
            [f"{n} owns {person.count} sheep.", f"The farm of {n} keeps {person.count} sheep.",
             f"{n} looks after a flock of {person.count} sheep."],
            [f"How many sheep does {n} own?", f"How many sheep are on the farm of {n}?",
             f"How large is the flock of {n}?"],
            (person.count,),
        ),
        "job": (
            [f"{n} works as {person.job}.", f"By profession, {n} is {person.job}.", f"{n} earns a living as {person.job}."],
            [f"What does {n} work as?", f"What is the profession of {n}?", f"What job does {n} do?"],
            (person.job, person.job.split(" ", 1)[1]),
        ),
    }


class QAGenerator:
    """Deterministic (seeded) generator; documents are padded to about `doc_tokens` model tokens."""

    def __init__(self, count_tokens: Callable[[str], int], seed: int = 0) -> None:
        self.count_tokens = count_tokens
        self.rng = random.Random(seed)
        self._used: set[str] = set()

    def _unique(self, make: Callable[[], str]) -> str:
        for _ in range(10_000):
            value = make()
            if value not in self._used:
                self._used.add(value)
                return value
        raise RuntimeError("the generator ran out of distinct names; use fewer documents per question")

    def _person(self) -> _Person:
        r = self.rng
        return _Person(
            name=self._unique(lambda: f"{r.choice(FIRST)} {r.choice(LAST)}"),
            town=self._unique(lambda: r.choice(TOWN_A) + r.choice(TOWN_B)),
            code=self._unique(lambda: str(r.randint(1000, 9999))),
            year=str(r.randint(1950, 2020)),
            date=f"{r.randint(1, 28)} {r.choice(MONTHS)} {r.randint(1940, 2005)}",
            count=str(r.randint(12, 480)),
            job=r.choice(JOBS),
        )

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
        self, person: _Person, doc_tokens: int, extra: list[str] = (), without: str | None = None
    ) -> str:
        """A person's facts among filler; `without` names an attribute left out."""
        facts = [self.rng.choice(phrasings) for attribute, (phrasings, _, _) in _fact_sentences(person).items()
                 if attribute != without]
        filler = [f.format(name=person.name) for f in FILLER]
        return self._pad(list(extra) + facts, filler, doc_tokens)

    def single(self, docs: int, doc_tokens: int) -> Question:
        self._used.clear()  # names need only be distinct within one question's documents
        person = self._person()
        attribute = self.rng.choice(list(_fact_sentences(person)))
        _, questions, answers = _fact_sentences(person)[attribute]
        gold = self._person_document(person, doc_tokens)
        distractors = self._distractors(docs - 1, doc_tokens, answers, attribute)
        return self._assemble(self.rng.choice(questions), [gold], distractors, answers, "single")

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

    def two_hop(self, docs: int, doc_tokens: int) -> Question:
        """The question names a person; their document names the organisation they manage (the
        bridge); the organisation's document holds the town the question asks for."""
        self._used.clear()
        r = self.rng
        person = self._person()
        org = self._unique(lambda: f"{r.choice(ORG_NAME)} {r.choice(ORG_KIND)}")
        town = self._unique(lambda: r.choice(TOWN_A) + r.choice(TOWN_B))
        link = r.choice([f"{person.name} is the director of the {org}.",
                         f"The {org} is run by its director, {person.name}.",
                         f"{person.name} has directed the {org} for years."])
        first = self._person_document(person, doc_tokens, extra=[link], without="town")
        located = r.choice([f"The {org} is located in {town}.", f"The {org} stands in the town of {town}.",
                            f"Visitors find the {org} in {town}."])
        second = self._pad([located], [f.format(org=org) for f in ORG_FILLER], doc_tokens)
        question = r.choice([f"In which town is the organisation directed by {person.name}?",
                             f"Where is the place that {person.name} directs located?",
                             f"In what town does {person.name} work as a director?"])
        distractors = self._distractors(docs - 2, doc_tokens, (town,), "town")
        return self._assemble(question, [first, second], distractors, (town,), "two-hop", bridge=org)

    def _assemble(
        self, question: str, gold: list[str], distractors: list[str], answers: tuple[str, ...], kind: str,
        bridge: str = "",
    ) -> Question:
        documents = gold + distractors
        order = list(range(len(documents)))
        self.rng.shuffle(order)
        shuffled = tuple(documents[i] for i in order)
        gold_positions = tuple(sorted(order.index(i) for i in range(len(gold))))
        return Question(question, shuffled, answers, kind, gold_positions, bridge)

    def questions(self, count: int, docs: int, doc_tokens: int, two_hop_fraction: float = 0.0) -> list[Question]:
        """`count` questions, the first round(count × two_hop_fraction) of them two-hop, then shuffled."""
        if docs < 1 or (two_hop_fraction > 0 and docs < 2):
            raise ValueError("two-hop questions need at least 2 documents per question")
        two_hop = round(count * two_hop_fraction)
        items = [self.two_hop(docs, doc_tokens) for _ in range(two_hop)]
        items += [self.single(docs, doc_tokens) for _ in range(count - two_hop)]
        self.rng.shuffle(items)
        return items
