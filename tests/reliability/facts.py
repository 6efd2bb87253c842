"""Small documents with one checkable fact each, and the question that retrieves it."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Fact:
    id: str
    text: str
    question: str
    answer: str

    def document(self) -> dict[str, str]:
        """The JSON document of `POST /v1/documents`."""
        return {"id": self.id, "text": self.text}


_PLACES = ["Oriel", "Velmora", "Tarn", "Sorrel", "Kestrel", "Brenn", "Ulvar", "Pellow", "Ambleford",
           "Corvin", "Dunmere", "Ashgrove", "Halden", "Mirefield", "Quillon", "Rookwell"]
_THINGS = ["vault", "harbour gate", "archive", "signal tower", "granary", "lighthouse",
           "observatory", "mint"]


def fact(number: int) -> Fact:
    """The `number`-th fact: a place and a thing of its own, and a four-digit code."""
    place = _PLACES[number % len(_PLACES)]
    thing = _THINGS[(number // len(_PLACES)) % len(_THINGS)]
    code = str(1000 + (number * 7919) % 9000)
    text = (f"The {thing} code at {place} is {code}. Only the keeper of the {place} {thing} "
            f"may use it, and it changes every year.")
    return Fact(f"fact-{number}", text, f"What is the {thing} code at {place}?", code)


def kv_files(data_dir: Path, chunk_text: str) -> list[Path]:
    """The disk-tier files holding the KV cache of `chunk_text` (docs/KVSTORE.md, "Tiers")."""
    digest = hashlib.sha256(chunk_text.encode("utf-8")).hexdigest()
    return sorted((data_dir / "kv" / digest[:2] / digest[2:4]).glob(f"{digest}.*.safetensors"))
