"""Epoch orders for the resumable batch iterators (GPT blocks, fine-tuning rows, biLM pieces).

Epoch `e`'s order of `n` rows is `np.random.default_rng([seed, e]).permutation(n)`: it depends
only on the seed and the epoch, so every host draws the same order and a resumed iterator
continues it. Drawing it is O(n), so it is drawn once per epoch, not once per step (a 10M-row
dataset spent ~0.6 s a step on it).
"""
from __future__ import annotations

import numpy as np


class EpochOrder:
    """`order(epoch)`: the permutation of `n` rows for that epoch (`shuffle=False`: 0..n-1),
    kept until another epoch is asked for (the next one, or another after a resume)."""

    def __init__(self, n: int, seed: int, shuffle: bool = True):
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self._kept: tuple[int, np.ndarray] | None = None

    def __call__(self, epoch: int) -> np.ndarray:
        if self._kept is None or self._kept[0] != epoch:
            order = (np.random.default_rng([self.seed, epoch]).permutation(self.n)
                     if self.shuffle else np.arange(self.n))
            self._kept = (epoch, order)
        return self._kept[1]
