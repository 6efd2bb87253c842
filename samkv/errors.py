"""Typed errors of the engine; each message says what was wrong and what to do about it."""


class SamKVError(Exception):
    """Base class of every error the engine raises on purpose."""


class ModelLoadError(SamKVError):
    """The model could not be found, converted or loaded."""


class InvalidRequest(SamKVError, ValueError):
    """A question, method or parameter the engine cannot accept."""


class UnknownMethod(InvalidRequest):
    """The method name is not one the engine offers."""


class ContextTooLong(InvalidRequest):
    """The assembled prompt would not fit in the model's context window."""


class FingerprintMismatch(InvalidRequest):
    """A stored document cache was made by another model, tokenizer or prompt template."""


class ReuseRefused(SamKVError):
    """The load-time self-check found that KV reuse is not exact on this model."""
