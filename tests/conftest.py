"""Fixtures shared by every test package: the embedded engine (loaded once) and tiny random models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# The served default is the 0.5B model; most tests (and the servers they spawn) use the 135M one.
SMALL_MODEL = "smollm2-135m-instruct"
os.environ.setdefault("SAMKV_MODEL", SMALL_MODEL)


@pytest.fixture(scope="session")
def embedded_engine():
    """The embedded SmolLM2-135M-Instruct on the CPU, self-checked at load."""
    from samkv import Engine

    return Engine.load(SMALL_MODEL)


@pytest.fixture(scope="session")
def embedded_tokenizer():
    from samkv import load_tokenizer

    return load_tokenizer(SMALL_MODEL)


def _tiny_config(family: str, tokenizer, layers: int):
    common = {
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "tie_word_embeddings": False,
    }
    if family == "llama":
        return LlamaConfig(rope_theta=10000.0, **common)
    if family == "llama-scaled-rope":
        scaling = {
            "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 512,
        }
        return LlamaConfig(rope_theta=500000.0, rope_scaling=scaling, **common)
    if family == "qwen2":
        return Qwen2Config(rope_theta=10000.0, use_sliding_window=False, **common)
    raise ValueError(family)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, embedded_tokenizer):
    """Factory: a local checkpoint of a randomly initialised small model of a given family."""
    made: dict[tuple[str, int], Path] = {}

    def make(family: str = "llama", layers: int = 3) -> Path:
        if (family, layers) not in made:
            torch.manual_seed(0)
            path = tmp_path_factory.mktemp(f"tiny-{family}-{layers}")
            model = AutoModelForCausalLM.from_config(_tiny_config(family, embedded_tokenizer, layers))
            # Random init at std 0.02 gives near-uniform attention; larger weights make
            # position errors visible in the logits.
            with torch.no_grad():
                for name, param in model.named_parameters():
                    if param.dim() == 2:
                        param.normal_(0, 0.2 if "embed" in name else 0.08)
            model.save_pretrained(path)
            embedded_tokenizer.save_pretrained(path)
            made[(family, layers)] = path
        return made[(family, layers)]

    return make


@pytest.fixture(scope="session")
def tiny_engine(tiny_checkpoint):
    """Factory: an Engine over a tiny random checkpoint (cached per family and depth)."""
    from samkv import Engine

    engines = {}

    def make(family: str = "llama", layers: int = 3):
        if (family, layers) not in engines:
            engines[(family, layers)] = Engine.load(tiny_checkpoint(family, layers), device="cpu")
        return engines[(family, layers)]

    return make


DOCUMENTS = [
    "The harbour master of Velmora is Ilse Brandt. She took the post in 2011 after a long career at sea.",
    "Copper from the Tarn mines is shipped every spring. The mines employ four hundred people.",
    "The vault code at the Oriel bank is 4471. Only the night manager is allowed to use it.",
    "Lake Sorrel freezes in January. Skaters gather on its northern shore every weekend.",
]


def prefix_cache(engine, room: int):
    """A KV cache holding the engine's prefix P, with room for `room` more tokens."""
    from samkv.cache import KVMeter

    cache = engine.new_cache(engine.prefix_len + room, KVMeter())
    for layer in range(engine.ops.shape.num_layers):
        cache.write_layer(layer, 0, *engine.prefix.layer(layer))
    cache.length = engine.prefix_len
    return cache
