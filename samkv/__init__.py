"""SamKV engine: per-document KV encoding, multi-context assembly, and the reuse methods."""

from samkv.document import DocumentKV, DocumentMeta, DocumentSource, InMemorySource, LayerKV
from samkv.engine import Engine
from samkv.errors import (
    ContextTooLong,
    FingerprintMismatch,
    InvalidRequest,
    ModelLoadError,
    ReuseRefused,
    SamKVError,
    UnknownMethod,
)
from samkv.generation import Generation, GenerationStream
from samkv.methods import METHODS, MethodInfo, method_info
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
    "MethodInfo",
    "ModelLoadError",
    "ReuseRefused",
    "SamKVError",
    "UnknownMethod",
    "load_tokenizer",
    "method_info",
]
