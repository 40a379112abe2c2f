"""Deterministic, resumable batches of masked BERT pretraining instances.

A batch is a dict of numpy arrays, zero-padded (L = max_seq_length, P = max_predictions_per_seq):

    input_ids       int32   (B, L)  `[CLS] A [SEP] B [SEP]` after MLM replacement
    segment_ids     int32   (B, L)  0 for `[CLS] A [SEP]`, 1 for `B [SEP]`
    input_mask      int32   (B, L)  1 on real tokens, 0 on padding
    masked_positions int32  (B, P)  positions to predict
    masked_ids      int32   (B, P)  original tokens there
    masked_weights  float32 (B, P)  1.0 on real predictions, 0.0 on padding
    nsp_labels      int32   (B,)    0 = B is the actual next segment, 1 = random (as in HF)
    nsp_weights     float32 (B,)    1.0 on real rows, 0.0 on padding rows (eval's last batch)

Determinism: the order of epoch `e` is `default_rng([seed, SHUFFLE, e]).permutation(N)` and the
mask of instance `i` comes from `default_rng([seed, MASK, e, i])` (dynamic masking) or
`default_rng([seed, STATIC, i])` (static), so every batch is a pure function of
(seed, epoch, batch index). Hence:

* `get_state()` is just `{"epoch", "index"}` (plus sizes, checked on restore), and a restart
  from it reproduces the same batches;
* with `process_count` processes each builds only rows `[p*b:(p+1)*b]` of the global batch
  (`b = B / process_count`), and together they see exactly the single-process batch.
"""
from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

from tl_jax.data.masking import Masker

_SHUFFLE_STREAM = 23
_DYNAMIC_MASK_STREAM = 21
_STATIC_MASK_STREAM = 22
_EVAL_MASK_STREAM = 24

BATCH_KEYS = ("input_ids", "segment_ids", "input_mask", "masked_positions", "masked_ids",
              "masked_weights", "nsp_labels", "nsp_weights")


def zero_batch(batch_size: int, max_seq_length: int, max_predictions: int) -> dict:
    """An all-padding batch: the shapes and dtypes every batch has."""
    B, L, P = batch_size, max_seq_length, max_predictions
    return {
        "input_ids": np.zeros((B, L), np.int32),
        "segment_ids": np.zeros((B, L), np.int32),
        "input_mask": np.zeros((B, L), np.int32),
        "masked_positions": np.zeros((B, P), np.int32),
        "masked_ids": np.zeros((B, P), np.int32),
        "masked_weights": np.zeros((B, P), np.float32),
        "nsp_labels": np.zeros((B,), np.int32),
        "nsp_weights": np.zeros((B,), np.float32),
    }


def make_batch(instances, rows, masker: Masker, max_seq_length: int, rng_of) -> dict:
    """Masks and pads the instances at `rows` (-1 = an all-padding row).

    `rng_of(i)` gives the generator for instance i's mask.
    """
    batch = zero_batch(len(rows), max_seq_length, masker.max_predictions)
    for r, i in enumerate(rows):
        if i < 0:
            continue
        tokens = instances.tokens_of(i)
        n = len(tokens)
        masked = masker.mask(tokens, rng_of(int(i)))
        k = len(masked.positions)
        batch["input_ids"][r, :n] = masked.input_ids
        batch["segment_ids"][r, instances.num_a[i]:n] = 1
        batch["input_mask"][r, :n] = 1
        batch["masked_positions"][r, :k] = masked.positions
        batch["masked_ids"][r, :k] = masked.labels
        batch["masked_weights"][r, :k] = 1.0
        batch["nsp_labels"][r] = instances.nsp_labels[i]
        batch["nsp_weights"][r] = 1.0
    return batch


def _check_instances(instances, max_seq_length: int) -> None:
    if len(instances) and int(np.diff(instances.offsets).max()) > max_seq_length:
        raise ValueError(f"An instance has {int(np.diff(instances.offsets).max())} tokens, more "
                         f"than max_seq_length={max_seq_length}.")


def _process_slice(global_size: int, process_index: int, process_count: int) -> slice:
    if global_size % process_count:
        raise ValueError(f"Global batch size {global_size} is not divisible by the process count "
                         f"{process_count}.")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} outside [0, {process_count}).")
    local = global_size // process_count
    return slice(process_index * local, (process_index + 1) * local)


class PretrainingIterator:
    """Endless host-local training batches over fixed instances; epochs reshuffle (and remask).

    Args:
      instances: `PretrainingInstances` (tokens/offsets/num_a/nsp_labels).
      masker: the MLM `Masker` (its `max_predictions` is P).
      max_seq_length: L.
      global_batch_size: B, summed over processes.
      seed: with (epoch, index) determines everything.
      dynamic_masking: a new mask every epoch (default), else one fixed mask per instance
        (static: for BERT's `dupe_factor`, pass the duplicated instances).
      process_index, process_count: this process's rows of the global batch.
      drop_remainder: drop the last partial global batch of each epoch (default). Otherwise it
        is filled with all-padding rows (zero weights, `nsp_weights` 0).
    """

    def __init__(self, instances, masker: Masker, max_seq_length: int, global_batch_size: int,
                 seed: int, dynamic_masking: bool = True, process_index: int = 0,
                 process_count: int = 1, drop_remainder: bool = True):
        _check_instances(instances, max_seq_length)
        self.instances = instances
        self.masker = masker
        self.max_seq_length = max_seq_length
        self.global_batch_size = global_batch_size
        self.seed = seed
        self.dynamic_masking = dynamic_masking
        self.drop_remainder = drop_remainder
        self._rows = _process_slice(global_batch_size, process_index, process_count)
        n = len(instances)
        self.batches_per_epoch = n // global_batch_size if drop_remainder else -(-n // global_batch_size)
        if self.batches_per_epoch == 0:
            raise ValueError(f"{n} instances make no full batch of {global_batch_size}; lower the "
                             "batch size or add data.")
        self._epoch = 0
        self._index = 0
        self._order_epoch = None
        self._order = None

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The shuffled instance order of `epoch` (same on every process)."""
        if self._order_epoch != epoch:
            rng = np.random.default_rng([self.seed, _SHUFFLE_STREAM, epoch])
            self._order = rng.permutation(len(self.instances))
            self._order_epoch = epoch
        return self._order

    def global_rows(self, epoch: int, index: int) -> np.ndarray:
        """Instance indices of global batch `index` of `epoch` (-1 = padding row)."""
        B = self.global_batch_size
        rows = self.epoch_order(epoch)[index * B:(index + 1) * B]
        return np.concatenate([rows, np.full(B - len(rows), -1, rows.dtype)])

    def _mask_rng(self, epoch: int):
        if self.dynamic_masking:
            return lambda i: np.random.default_rng([self.seed, _DYNAMIC_MASK_STREAM, epoch, i])
        return lambda i: np.random.default_rng([self.seed, _STATIC_MASK_STREAM, i])

    def __iter__(self) -> "PretrainingIterator":
        return self

    def __next__(self) -> dict:
        if self._index >= self.batches_per_epoch:
            self._epoch += 1
            self._index = 0
        rows = self.global_rows(self._epoch, self._index)[self._rows]
        batch = make_batch(self.instances, rows, self.masker, self.max_seq_length,
                           self._mask_rng(self._epoch))
        self._index += 1
        return batch

    def get_state(self) -> dict:
        """JSON-serialisable position: the next batch is batch `index` of `epoch`."""
        return {"epoch": self._epoch, "index": self._index,
                "num_instances": len(self.instances), "global_batch_size": self.global_batch_size}

    def set_state(self, state: dict) -> None:
        """Continues from a `get_state()` result (of this or another process count)."""
        for key in ("epoch", "index"):
            if key not in state:
                raise ValueError(f"Iterator state {state} lacks {key!r}.")
        for key, mine in (("num_instances", len(self.instances)),
                          ("global_batch_size", self.global_batch_size)):
            if key in state and state[key] != mine:
                raise ValueError(f"Iterator state was saved with {key}={state[key]} but this "
                                 f"iterator has {mine}: the data or batch size changed since "
                                 "the checkpoint, so the position cannot be restored.")
        epoch, index = int(state["epoch"]), int(state["index"])
        if epoch < 0 or not 0 <= index <= self.batches_per_epoch:
            raise ValueError(f"Iterator state {state} is out of range "
                             f"({self.batches_per_epoch} batches per epoch).")
        self._epoch, self._index = epoch, index


class EvalBatches:
    """A finite pass of eval batches that knows its length (the eval bar's total), made afresh
    by each iteration."""

    def __init__(self, make: Callable[[], Iterator[dict]], count: int):
        self._make, self._count = make, count

    def __iter__(self) -> Iterator[dict]:
        return self._make()

    def __len__(self) -> int:
        return self._count


def eval_batches(instances, masker: Masker, max_seq_length: int, global_batch_size: int,
                 seed: int, process_index: int = 0, process_count: int = 1) -> EvalBatches:
    """One finite pass over `instances` in order, with fixed masks (same on every call), of
    `len()` global batches.

    Nothing is dropped: the last global batch is filled with all-padding rows whose
    `masked_weights` and `nsp_weights` are 0, so weighted metrics count every instance once.
    """
    _check_instances(instances, max_seq_length)
    rows_slice = _process_slice(global_batch_size, process_index, process_count)
    n = len(instances)
    rng_of = lambda i: np.random.default_rng([seed, _EVAL_MASK_STREAM, i])  # noqa: E731

    def make() -> Iterator[dict]:
        for start in range(0, n, global_batch_size):
            rows = np.arange(start, start + global_batch_size)
            rows = np.where(rows < n, rows, -1)
            yield make_batch(instances, rows[rows_slice], masker, max_seq_length, rng_of)

    return EvalBatches(make, -(-n // global_batch_size))
