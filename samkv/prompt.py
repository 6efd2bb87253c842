"""The prompt X = [P ; D_1 … D_n ; Q] split into its reusable parts, rendered with the model's chat template."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

SYSTEM_MESSAGE = (
    "You answer questions using the documents given. Answer with a short phrase taken from them."
)
_DOCS = "\x00DOCUMENTS\x00"
_QUESTION = "\x00QUESTION\x00"
_USER_MESSAGE = f"Documents:\n{_DOCS}Question: {_QUESTION}"


@dataclass(frozen=True)
class PromptTemplate:
    """Text pieces around the documents and the question, in the model's chat format."""

    prefix: str  # P: chat header, system message, "Documents:" line
    question_head: str  # before the question text
    question_tail: str  # end of the user turn, start of the assistant turn
    document_separator: str = "\n\n"

    @classmethod
    def for_tokenizer(cls, tokenizer: PreTrainedTokenizerBase) -> PromptTemplate:
        """Splits the tokenizer's chat template around the documents and the question."""
        if not getattr(tokenizer, "chat_template", None):
            head, rest = _USER_MESSAGE.split(_DOCS)
            question_head, _ = rest.split(_QUESTION)
            return cls(prefix=f"{SYSTEM_MESSAGE}\n\n{head}", question_head=question_head,
                       question_tail="\nAnswer:")
        rendered = _render(tokenizer)
        prefix, rest = rendered.split(_DOCS)
        question_head, question_tail = rest.split(_QUESTION)
        return cls(prefix=prefix, question_head=question_head, question_tail=question_tail)

    @property
    def digest(self) -> str:
        text = f"{self.prefix}\x1f{self.question_head}\x1f{self.question_tail}\x1f{self.document_separator}"
        return hashlib.sha256(text.encode()).hexdigest()


def _render(tokenizer: PreTrainedTokenizerBase) -> str:
    messages = [
        {"role": "system", "content": SYSTEM_MESSAGE},
        {"role": "user", "content": _USER_MESSAGE},
    ]
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception:  # noqa: BLE001 - templates that refuse a system role raise arbitrary errors
        user_only = [{"role": "user", "content": f"{SYSTEM_MESSAGE}\n\n{_USER_MESSAGE}"}]
        return tokenizer.apply_chat_template(user_only, tokenize=False, add_generation_prompt=True)


class PromptTokenizer:
    """Token ids of each part of the prompt; parts are tokenized apart so they can be reused apart."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, template: PromptTemplate) -> None:
        self.tokenizer = tokenizer
        self.template = template

    def _ids(self, text: str, special: bool = False) -> torch.Tensor:
        ids = self.tokenizer(text, add_special_tokens=special)["input_ids"]
        return torch.tensor(ids, dtype=torch.long)

    def prefix(self) -> torch.Tensor:
        """P, starting with the beginning-of-sequence token when the tokenizer uses one.

        Chat templates often write that token into the text already; adding it again would
        give the model a prompt it never saw in training.
        """
        ids = self._ids(self.template.prefix)
        bos = self.tokenizer.bos_token_id
        adds_bos = bos is not None and self.tokenizer("x")["input_ids"][:1] == [bos]
        if adds_bos and (ids.numel() == 0 or int(ids[0]) != bos):
            ids = torch.cat([torch.tensor([bos]), ids])
        return ids

    def document(self, text: str) -> torch.Tensor:
        """A chunk's tokens: its text, stripped, then the document separator."""
        return self._ids(text.strip() + self.template.document_separator)

    def document_spans(self, text: str) -> list[tuple[int, int]]:
        """[start, end) in `text` of each token of `document(text)`; the separator's tokens, which
        are not part of `text`, get empty spans at the end of the stripped text."""
        body = text.strip()
        lead = len(text) - len(text.lstrip())
        encoded = self.tokenizer(
            body + self.template.document_separator, add_special_tokens=False, return_offsets_mapping=True
        )
        end = len(body)
        return [(lead + min(start, end), lead + min(stop, end)) for start, stop in encoded["offset_mapping"]]

    def question(self, text: str, answer_prefix: str = "") -> torch.Tensor:
        """Q: the question in its turn, then the start of the answer turn and `answer_prefix`."""
        t = self.template
        return self._ids(f"{t.question_head}{text.strip()}{t.question_tail}{answer_prefix}")

    def answer(self, text: str) -> torch.Tensor:
        return self._ids(text)

    def count(self, text: str) -> int:
        """Tokens of `text` alone, without special tokens or the document separator."""
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
