"""Store keys: the model fingerprint and the chunk text's content hash.

Identical chunks map to one key, so they are stored once per model; a cache made by another
model, tokenizer or prompt template lives under another key and is never served.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

_HEX64 = re.compile(r"[0-9a-f]{64}")


def fingerprint_hash(fingerprint: str) -> str:
    """sha256 hex digest of a model fingerprint."""
    return hashlib.sha256(fingerprint.encode("utf-8")).hexdigest()


def content_hash(text: str) -> str:
    """sha256 hex digest of a chunk's text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class StoreKey:
    """Where a chunk's cache lives in every tier; `str(key)` is its stable, file-name-safe form."""

    content_hash: str  # sha256 hex of the chunk text
    fingerprint_hash: str  # sha256 hex of the model fingerprint

    def __post_init__(self) -> None:
        for name in ("content_hash", "fingerprint_hash"):
            if not _HEX64.fullmatch(getattr(self, name)):
                raise ValueError(f"StoreKey.{name} must be 64 lowercase hex digits")

    def __str__(self) -> str:
        # The content hash comes first so that disk paths fan out evenly over its first digits.
        return f"{self.content_hash}.{self.fingerprint_hash}"

    @classmethod
    def parse(cls, text: str) -> StoreKey:
        """The inverse of `str(key)`."""
        content, sep, fingerprint = text.partition(".")
        if not sep:
            raise ValueError(f"not a store key: {text!r}")
        return cls(content, fingerprint)


def make_key(fingerprint: str, text: str) -> StoreKey:
    """The key of chunk `text` encoded by the model identified by `fingerprint`."""
    return StoreKey(content_hash(text), fingerprint_hash(fingerprint))
