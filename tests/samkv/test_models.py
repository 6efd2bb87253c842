"""The embedded models: pinned bytes only, Qwen2.5's own text splitting, and the 0.5B model end to end."""

from __future__ import annotations

import hashlib

import pytest
import regex

from samkv import Engine, ModelLoadError, load_tokenizer
from samkv.embedded import QWEN_05B, assemble_verified

# Qwen2.5's published pre-tokenizer: contractions, letters with one leading non-letter, each digit
# alone, punctuation runs, newlines, spaces.
QWEN2_SPLIT = regex.compile(
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
SPLIT_SAMPLES = [
    "The vault code at the Oriel bank is 4471.",
    "In 2023, Marta's lamp (22 nautical miles!) wasn't lit;  it's   there.\n\nNext:\tline",
    "Price: $3.50 -- 12,000 units @ 7am, e-mail: ops@oriel.example",
    "Ünïcödé naïve café, 日本語 テキスト 123",
]


def _parts(tmp_path, chunks: list[bytes]):
    paths = []
    for n, chunk in enumerate(chunks):
        path = tmp_path / f"part{n}.bin"
        path.write_bytes(chunk)
        paths.append(path)
    return paths


def test_assembly_accepts_exactly_the_pinned_bytes(tmp_path):
    chunks = [b"GGUF" + bytes(range(200)), bytes(100), b"tail"]
    whole = b"".join(chunks)
    out = assemble_verified(
        _parts(tmp_path, chunks), tmp_path / "m.gguf", len(whole), hashlib.sha256(whole).hexdigest()
    )
    assert out.read_bytes() == whole


@pytest.mark.parametrize("damage", ["flipped byte", "truncated", "extra bytes"])
def test_assembly_refuses_other_bytes_naming_the_expected_hash(tmp_path, damage):
    chunks = [b"GGUF" + bytes(range(200)), bytes(100)]
    whole = b"".join(chunks)
    expected = hashlib.sha256(whole).hexdigest()
    bad = {
        "flipped byte": [chunks[0], b"\x01" + chunks[1][1:]],
        "truncated": [chunks[0], chunks[1][:-1]],
        "extra bytes": [chunks[0], chunks[1] + b"x"],
    }[damage]
    target = tmp_path / "m.gguf"
    with pytest.raises(ModelLoadError) as raised:
        assemble_verified(_parts(tmp_path, bad), target, len(whole), expected)
    assert expected in str(raised.value)
    assert not target.exists()


@pytest.fixture(scope="module")
def qwen_tokenizer():
    return load_tokenizer(QWEN_05B)


@pytest.mark.slow
@pytest.mark.parametrize("text", SPLIT_SAMPLES)
def test_converted_qwen_tokenizer_splits_text_as_qwen25(qwen_tokenizer, text):
    pieces = qwen_tokenizer.backend_tokenizer.pre_tokenizer.pre_tokenize_str(text)
    decoded = [qwen_tokenizer.convert_tokens_to_string([piece]) for piece, _ in pieces]
    assert decoded == QWEN2_SPLIT.findall(text)


@pytest.mark.slow
def test_converted_qwen_tokenizer_writes_each_digit_alone(qwen_tokenizer):
    ids = qwen_tokenizer(" 4471", add_special_tokens=False)["input_ids"]
    assert [qwen_tokenizer.decode([i]) for i in ids] == [" ", "4", "4", "7", "1"]


@pytest.fixture(scope="module")
def qwen_engine():
    """The served default, self-checked at load (the reuse identity on a real Qwen2 model)."""
    return Engine.load(QWEN_05B, device="cpu")


@pytest.mark.slow
def test_qwen_05b_passes_the_self_check_and_answers(qwen_engine):
    assert qwen_engine.max_context == 32768
    documents = qwen_engine.encode_documents([
        ("The Oriel bank keeps its ledgers in the old customs house. Its vault code is 4471, "
         "changed every spring by the head clerk, Ilse Varga."),
        "The Kestrel railway runs from Dunmore to the coast. Its last steam engine retired in 1968.",
    ])
    out = qwen_engine.generate(
        "What is the vault code at the Oriel bank?", documents, method="samkv", max_new_tokens=16
    )
    assert "4471" in out.text


def test_unknown_model_names_the_embedded_ones(tmp_path):
    with pytest.raises(ModelLoadError, match=QWEN_05B):
        load_tokenizer(str(tmp_path / "no-such-model"))

