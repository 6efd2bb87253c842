"""Choosing the next token and turning token ids into text pieces as they arrive."""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase

from samkv.errors import InvalidRequest


class Sampler:
    """Greedy at temperature 0, else temperature and nucleus (top-p) sampling, seedable."""

    def __init__(self, temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None) -> None:
        if not temperature >= 0:
            raise InvalidRequest(f"temperature must be >= 0, got {temperature!r}")
        if not 0 < top_p <= 1:
            raise InvalidRequest(f"top_p must be in (0, 1], got {top_p!r}")
        self.temperature = temperature
        self.top_p = top_p
        self.generator = torch.Generator()
        if seed is not None:
            self.generator.manual_seed(seed)
        else:
            self.generator.seed()

    def __call__(self, logits: torch.Tensor) -> int:
        """The next token id from logits [1, vocab]."""
        logits = logits[-1].float().cpu()
        if self.temperature == 0:
            return int(torch.argmax(logits))
        probs = torch.softmax(logits / self.temperature, dim=-1)
        if self.top_p < 1:
            sorted_probs, order = torch.sort(probs, descending=True)
            outside = torch.cumsum(sorted_probs, 0) - sorted_probs > self.top_p
            sorted_probs[outside] = 0
            probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
        return int(torch.multinomial(probs, 1, generator=self.generator))


class TextPieces:
    """Incremental detokenisation: emits text only once it decodes to whole characters."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.emitted = ""

    def push(self, token_id: int) -> str:
        """The new text that `token_id` completes ("" while a multi-byte character is incomplete)."""
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd") or not text.startswith(self.emitted):
            return ""
        piece, self.emitted = text[len(self.emitted) :], text
        return piece

    def flush(self) -> str:
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        piece = text[len(self.emitted) :] if text.startswith(self.emitted) else ""
        self.emitted = text
        return piece


def stop_token_ids(tokenizer: PreTrainedTokenizerBase, generation_eos: int | list[int] | None) -> set[int]:
    """Every id that ends the assistant's turn: EOS and the chat template's end-of-turn marks."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    if isinstance(generation_eos, int):
        ids.add(generation_eos)
    elif generation_eos:
        ids.update(generation_eos)
    for mark in ("<|im_end|>", "<|eot_id|>", "<|end|>", "</s>"):
        token = tokenizer.convert_tokens_to_ids(mark)
        if isinstance(token, int) and token != tokenizer.unk_token_id:
            ids.add(token)
    return ids
