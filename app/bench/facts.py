"""What the QA generator draws from: names, towns, organisations, filler sentences, the phrasings
of each fact and of its question, and the whole-word match that checks where a value occurs."""

from __future__ import annotations

import re
from dataclasses import dataclass

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
# How the second hop's document names the bridge "<Name> <Kind>" when not verbatim.
BRIDGE_FORMS = ("short", "description", "pronoun")
LOCATED = ("The {org} is located in {town}.", "The {org} stands in the town of {town}.",
           "Visitors find the {org} in {town}.")
LOCATED_AFTER_MENTION = ("The {org} opened to the public many years ago. It is located in {town}.",
                         "The {org} has a long history. It stands in the town of {town}.",
                         "The {org} welcomes visitors all year. Visitors find it in {town}.")


@dataclass(frozen=True)
class Person:
    """A generated person and the attributes the questions ask about."""

    name: str
    town: str
    code: str
    year: str
    date: str
    count: str
    job: str


def fact_sentences(person: Person) -> dict[str, tuple[list[str], list[str], tuple[str, ...]]]:
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


def mentions(text: str, value: str) -> bool:
    """Whether `value` occurs in `text` as whole words."""
    return re.search(rf"(?<![0-9A-Za-z]){re.escape(value)}(?![0-9A-Za-z])", text) is not None
