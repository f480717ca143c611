"""How many jets each split of a sample holds: the one rule the loader splits by and every size
check or table counts with."""

from __future__ import annotations

__all__ = ["split_counts"]


def split_counts(n_jets: int, fractions: tuple[float, float, float]) -> tuple[int, int, int]:
    """Jets in the train, val and test splits of a sample of ``n_jets``: train and val rounded,
    test the rest (so the three always add up to the sample)."""
    n_train = int(round(fractions[0] * n_jets))
    n_val = int(round(fractions[1] * n_jets))
    return n_train, n_val, n_jets - n_train - n_val
