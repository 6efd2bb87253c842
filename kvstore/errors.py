"""Typed errors of the KV store; each message says what was wrong and what to do about it."""


class KVStoreError(Exception):
    """Base class of every error the store raises on purpose."""


class StoreWriteError(KVStoreError):
    """A cache could not be made durable (disk full, permissions, I/O error); nothing was left half-written."""


class DocumentNotFound(KVStoreError, KeyError):
    """No tier holds a valid cache for the key, and no chunk text was given to re-encode it."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class EncoderMismatch(KVStoreError, ValueError):
    """A cache handed to the store was made by another model, tokenizer or prompt template."""


class QueueFull(KVStoreError):
    """The precompute queue is full; retry later."""


class CorruptEntry(KVStoreError):
    """A stored copy failed its header, fingerprint or checksum check; it must not be served.

    Raised by tiers; the `TieredStore` discards the copy and falls through to the next tier.
    """


class TierUnavailable(KVStoreError):
    """A tier's medium cannot be reached (Redis down or timing out, an unreadable disk)."""


class TierFull(KVStoreError):
    """A tier refused a write for lack of space (Redis at maxmemory)."""


class FingerprintMismatch(CorruptEntry):
    """A stored copy's header names another model fingerprint than its key; it is never served."""
