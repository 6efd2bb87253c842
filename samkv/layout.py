"""Where each retrieved document's tokens sit in the logical prompt X = [P ; D_1 … D_n ; Q]."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Layout:
    """Token positions of the contexts; context index t runs over D_1 … D_n concatenated."""

    prefix_len: int  # |P|
    lengths: tuple[int, ...]  # L_i
    offsets: torch.Tensor  # [n] first context index of each document
    doc_of: torch.Tensor  # [N] document of each context token
    positions: torch.Tensor  # [N] absolute position |P| + t

    @classmethod
    def of(cls, prefix_len: int, lengths: list[int]) -> Layout:
        sizes = torch.tensor(lengths, dtype=torch.long)
        offsets = torch.cumsum(sizes, 0) - sizes
        doc_of = torch.repeat_interleave(torch.arange(len(lengths)), sizes)
        positions = prefix_len + torch.arange(int(sizes.sum()))
        return cls(prefix_len, tuple(lengths), offsets, doc_of, positions)

    @property
    def num_docs(self) -> int:
        return len(self.lengths)

    @property
    def context_len(self) -> int:
        """N, the number of context tokens."""
        return int(self.positions.shape[0])

    @property
    def question_start(self) -> int:
        """The position of Q's first token: |P| + N, whatever is kept of the contexts."""
        return self.prefix_len + self.context_len

    def all_tokens(self) -> torch.Tensor:
        return torch.arange(self.context_len)
