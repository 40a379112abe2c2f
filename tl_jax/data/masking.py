"""Masked-LM masking for BERT pretraining (Devlin et al., 2019, section 3.1 and appendix A.1).

`Masker.mask(tokens, rng)` picks `masked_lm_prob` of the maskable tokens (at least one if there
is one, at most `max_predictions_per_seq`) and replaces each picked token by [MASK] with
probability `mask_token_prob` (0.8), by a uniformly random non-special token with probability
`random_token_prob` (0.1), and leaves it unchanged otherwise. The model must predict the
original token at every picked position. (ELECTRA's code masks 85% and keeps 15%, no random
tokens: `mask_token_prob=0.85, random_token_prob=0.0`.)

Maskable means "not a special token": [CLS], [SEP], [PAD], [UNK] and [MASK] are never picked
(the original code only excluded [CLS]/[SEP]; predicting [UNK] teaches nothing). The count is
`round(masked_lm_prob * maskable tokens)`; the original's is `round(masked_lm_prob * all
tokens)`, [CLS] and both [SEP]s included, so at most one prediction more per example (10 rather
than 9 of a full 64-token pair; both give 19 of 128). The random replacement is drawn from the
non-special tokens; the original drew from the whole vocabulary.

With `whole_word=True` the unit of selection is a word: a token and the `##` pieces that follow
it are picked together or not at all, as in BERT's whole-word-masking release. The 80/10/10
choice is still made per token, as there.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from tl_jax.data.tokenizer import Tokenizer


def check_replacement_probs(mask_token_prob: float, random_token_prob: float) -> None:
    """Both in [0, 1] and together at most 1 (the rest is left unchanged)."""
    if not (0.0 <= mask_token_prob <= 1.0 and 0.0 <= random_token_prob <= 1.0
            and mask_token_prob + random_token_prob <= 1.0 + 1e-9):
        raise ValueError(f"mask_token_prob={mask_token_prob} and random_token_prob="
                         f"{random_token_prob} must be in [0, 1] and sum to at most 1 (BERT: "
                         "0.8 and 0.1; ELECTRA's code: 0.85 and 0).")


@dataclasses.dataclass(frozen=True)
class MaskedTokens:
    """One masked example: `input_ids` to feed, and the predictions to score."""

    input_ids: np.ndarray  # (n,) int32, tokens after replacement
    positions: np.ndarray  # (k,) int32, sorted positions of the picked tokens
    labels: np.ndarray  # (k,) int32, original ids at those positions


class Masker:
    """Applies MLM masking; holds the per-vocabulary tables it needs from the tokenizer."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        masked_lm_prob: float = 0.15,
        max_predictions_per_seq: int = 20,
        whole_word: bool = False,
        mask_token_prob: float = 0.8,
        random_token_prob: float = 0.1,
    ):
        if not 0.0 < masked_lm_prob <= 1.0:
            raise ValueError(f"masked_lm_prob must be in (0, 1], got {masked_lm_prob}.")
        if max_predictions_per_seq < 1:
            raise ValueError(f"max_predictions_per_seq must be >= 1, got {max_predictions_per_seq}.")
        check_replacement_probs(mask_token_prob, random_token_prob)
        self.mask_token_prob = float(mask_token_prob)
        self.random_token_prob = float(random_token_prob)
        self.masked_lm_prob = float(masked_lm_prob)
        self.max_predictions = int(max_predictions_per_seq)
        self.whole_word = bool(whole_word)
        self.mask_id = tokenizer.mask_id
        vocab = np.arange(tokenizer.vocab_size)
        self._is_special = tokenizer.is_special(vocab)  # (V,)
        self._word_start = tokenizer.word_starts(vocab)  # (V,)
        self._random_pool = tokenizer.non_special_ids()  # (V - 5,)

    def num_to_predict(self, num_candidates: int) -> int:
        """How many tokens to pick among `num_candidates` maskable ones."""
        wanted = max(1, int(round(num_candidates * self.masked_lm_prob)))
        return min(self.max_predictions, wanted, num_candidates)

    def mask(self, tokens: np.ndarray, rng: np.random.Generator) -> MaskedTokens:
        """Masks one example's tokens (e.g. `[CLS] A [SEP] B [SEP]`) with the given rng."""
        tokens = np.asarray(tokens, dtype=np.int32)
        candidates = np.flatnonzero(~self._is_special[tokens])
        if candidates.size == 0:
            # Text the vocabulary cannot represent ([UNK] only): nothing to predict, and the
            # row's prediction weights stay zero rather than the run failing.
            empty = np.zeros(0, np.int32)
            return MaskedTokens(input_ids=tokens.copy(), positions=empty, labels=empty)
        num = self.num_to_predict(candidates.size)
        if self.whole_word:
            positions = self._pick_whole_words(tokens, candidates, num, rng)
        else:
            positions = np.sort(rng.choice(candidates, size=num, replace=False))
        positions = positions.astype(np.int32)
        labels = tokens[positions]
        # One uniform draw per picked token: < mask_token_prob (0.8) -> [MASK],
        # >= 1 - random_token_prob (0.9) -> random, else unchanged.
        draw = rng.random(positions.size)
        random_ids = self._random_pool[rng.integers(0, self._random_pool.size, size=positions.size)]
        new_ids = np.where(draw < self.mask_token_prob, self.mask_id,
                           np.where(draw >= 1.0 - self.random_token_prob, random_ids, labels))
        input_ids = tokens.copy()
        input_ids[positions] = new_ids
        return MaskedTokens(input_ids=input_ids, positions=positions, labels=labels)

    def _pick_whole_words(self, tokens, candidates, num, rng) -> np.ndarray:
        # A candidate continues the previous word if it is a '##' piece right after another
        # candidate; a '##' piece after [SEP] (a segment truncated mid-word) starts its own word.
        continues = ~self._word_start[tokens[candidates]]
        continues[1:] &= candidates[1:] == candidates[:-1] + 1
        continues[0] = False
        words = np.split(candidates, np.flatnonzero(~continues)[1:])
        picked: list[int] = []
        for w in rng.permutation(len(words)):
            word = words[w]
            if len(picked) + len(word) > num:
                continue  # As in BERT: skip a word that would overshoot, try shorter ones.
            picked.extend(word.tolist())
            if len(picked) >= num:
                break
        if not picked:
            # Every word is longer than the budget: take the shortest one whole, capped at
            # max_predictions (only a word of more pieces than that gets cut).
            shortest = min(words, key=len)
            picked = shortest[: self.max_predictions].tolist()
        return np.sort(np.asarray(picked, dtype=np.int32))
