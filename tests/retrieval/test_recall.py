"""Recall@5 on generated single-fact questions among near-duplicate distractors."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

FIRST = [
    "Amara",
    "Bastian",
    "Chiara",
    "Dmitri",
    "Elif",
    "Farid",
    "Greta",
    "Hiroshi",
    "Ingrid",
    "Jonas",
    "Kavya",
    "Lorenzo",
    "Maren",
    "Nikolai",
    "Odile",
    "Pavel",
    "Quentin",
    "Rania",
    "Sven",
    "Tamsin",
    "Ulrike",
    "Viktor",
    "Wanjiru",
    "Xavier",
    "Yusuf",
    "Zofia",
    "Anselm",
    "Beatriz",
    "Cosmin",
    "Daria",
]
LAST = [
    "Okafor",
    "Lindqvist",
    "Marchetti",
    "Haddad",
    "Novak",
    "Takahashi",
    "Oyelaran",
    "Brandt",
    "Castellanos",
    "Duval",
    "Eriksen",
    "Fitzgerald",
    "Gallo",
    "Horvath",
    "Iwasaki",
    "Jansen",
    "Kowalczyk",
    "Laurent",
    "Moreau",
    "Nakamura",
    "Olsen",
    "Petrov",
    "Quiroga",
    "Rasmussen",
    "Sokolov",
    "Tanaka",
    "Ueda",
    "Varga",
    "Whitfield",
    "Yilmaz",
]
CITIES = [
    "Tromso",
    "Valparaiso",
    "Tbilisi",
    "Lagos",
    "Hobart",
    "Quito",
    "Bergen",
    "Mombasa",
    "Porto",
    "Tallinn",
    "Cusco",
    "Leipzig",
    "Hanoi",
    "Mendoza",
    "Windhoek",
    "Tampere",
    "Ghent",
    "Arequipa",
    "Kazan",
    "Nagoya",
]
JOBS = [
    "glassblower",
    "cartographer",
    "beekeeper",
    "luthier",
    "actuary",
    "stonemason",
    "archivist",
    "farrier",
    "hydrologist",
    "sommelier",
    "typesetter",
    "clockmaker",
]
COMPANIES = [
    "Northwind",
    "Halcyon",
    "Bluefin",
    "Ironbark",
    "Meridian",
    "Solstice",
    "Kestrel",
    "Ambergate",
    "Larkspur",
    "Quillon",
]
BUILDINGS = [
    "north",
    "annex",
    "harbour",
    "depot",
    "east",
    "tower",
    "library",
    "west",
    "wing",
    "foundry",
]
MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]


@dataclass(frozen=True)
class Fact:
    text: str
    questions: tuple[str, ...]


def date(rng: random.Random) -> str:
    return f"{rng.randint(1, 28)} {rng.choice(MONTHS)} {rng.randint(1940, 2005)}"


def person_facts(name: str, rng: random.Random) -> list[Fact]:
    city, job, company = rng.choice(CITIES), rng.choice(JOBS), rng.choice(COMPANIES)
    code = f"{rng.choice('KQXZ')}{rng.choice('RVW')}-{rng.randint(1000, 9999)}"
    return [
        Fact(
            f"Parish records show that {name} was born in {city} on {date(rng)}, "
            "the second child of the family.",
            (f"Where was {name} born?", f"What is the birth date of {name}?"),
        ),
        Fact(
            f"{name} works as a {job} for the {company} company and has held that "
            f"position since {rng.randint(1980, 2023)}.",
            (f"What is the job of {name}?", f"Which company employs {name}?"),
        ),
        Fact(
            f"The access code assigned to {name} for the {rng.choice(BUILDINGS)} building "
            f"is {code}, renewed every year.",
            (f"What is the access code of {name}?",),
        ),
    ]


def namesake_distractor(name: str, rng: random.Random) -> str:
    """Names the person with a city, a date and a code, but answers none of the questions."""
    return (
        f"{name} signed the visitor log of the {rng.choice(BUILDINGS)} building in "
        f"{rng.choice(CITIES)} on {date(rng)} with badge {rng.choice('KQXZ')}V-"
        f"{rng.randint(1000, 9999)}."
    )


def distractor(rng: random.Random) -> str:
    """Same vocabulary and templates, about no one a question asks about."""
    return rng.choice(
        [
            (
                f"The {rng.choice(CITIES)} guild of {rng.choice(JOBS)}s met on {date(rng)} to discuss "
                f"the {rng.choice(COMPANIES)} company's new contracts."
            ),
            (
                f"Last winter a visiting {rng.choice(JOBS)} from {rng.choice(CITIES)} registered the "
                f"temporary access code {rng.choice('KQXZ')}V-{rng.randint(1000, 9999)} for the "
                f"{rng.choice(BUILDINGS)} building."
            ),
            (
                f"The {rng.choice(COMPANIES)} company opened an office in {rng.choice(CITIES)} on "
                f"{date(rng)}, hiring a {rng.choice(JOBS)} and an archivist."
            ),
        ]
    )


@pytest.mark.slow
def test_recall_at_5_on_single_fact_questions(open_service, count_tokens):
    rng = random.Random(20240611)
    names = rng.sample([f"{f} {l}" for f in FIRST for l in LAST], 270)
    paragraphs: list[str] = []
    questions: list[tuple[str, str]] = []  # (question, text of the chunk that answers it)
    for name in names:
        for fact in person_facts(name, rng):
            paragraphs.append(fact.text)
            questions.extend((q, fact.text) for q in fact.questions)
    paragraphs.extend(distractor(rng) for _ in range(250))
    rng.shuffle(paragraphs)

    # A chunk fits the longest paragraph but never two, so every paragraph is one chunk.
    lengths = [count_tokens(p) for p in paragraphs]
    assert 2 * min(lengths) > max(lengths)
    service = open_service(chunk_tokens=max(lengths))
    for start in range(0, len(paragraphs), 60):
        service.add_document("\n\n".join(paragraphs[start : start + 60]), f"registry-{start}")
    chunk_texts = {c.text for d in service.list_documents() for c in service.chunks_of(d.id)}
    assert chunk_texts == set(paragraphs) and len(chunk_texts) >= 1000

    asked = rng.sample(questions, 200)
    found = 0
    misses = []
    for question, answer in asked:
        top = [hit.text for hit in service.search(question, top_k=5)]
        if answer in top:
            found += 1
        else:
            misses.append((question, top[:2]))
    recall = found / len(asked)
    assert recall >= 0.95, f"recall@5 {recall:.3f}; first misses: {misses[:5]}"
