"""SamKV engine: per-document KV encoding, multi-context assembly, and the reuse methods."""

from samkv.document import DocumentKV, DocumentMeta, DocumentSource, InMemorySource, LayerKV
from samkv.engine import Engine, Generation, GenerationStream
from samkv.errors import (
    ContextTooLong,
    FingerprintMismatch,
    InvalidRequest,
    ModelLoadError,
    ReuseRefused,
    SamKVError,
    UnknownMethod,
)
from samkv.methods import METHODS
from samkv.runtime import load_tokenizer

__all__ = [
    "METHODS",
    "ContextTooLong",
    "DocumentKV",
    "DocumentMeta",
    "DocumentSource",
    "Engine",
    "FingerprintMismatch",
    "Generation",
    "GenerationStream",
    "InMemorySource",
    "InvalidRequest",
    "LayerKV",
    "ModelLoadError",
    "ReuseRefused",
    "SamKVError",
    "UnknownMethod",
    "load_tokenizer",
]
