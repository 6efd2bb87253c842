"""The seed sets of the protocol (docs/PROTOCOL.md): tune on dev seeds, report on test seeds."""

from __future__ import annotations

SPLITS: dict[str, range] = {"dev": range(100, 200), "test": range(1000, 1100)}


def split_of(seed: int) -> str:
    """The split a seed belongs to; "scratch" for seeds in neither (e.g. earlier runs' seed 0)."""
    return next((name for name, seeds in SPLITS.items() if seed in seeds), "scratch")


def resolve_seed(split: str | None, seed: int | None) -> tuple[str, int]:
    """(split, seed) of a run: a split's first seed when no seed is given; a seed outside the
    named split is refused, so a dev run cannot read test questions by accident."""
    if split is None:
        chosen = 0 if seed is None else seed
        return split_of(chosen), chosen
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    seeds = SPLITS[split]
    if seed is None:
        return split, seeds.start
    if seed not in seeds:
        raise ValueError(f"seed {seed} is not a {split} seed ({split} seeds are {seeds.start}-{seeds.stop - 1})")
    return split, seed
