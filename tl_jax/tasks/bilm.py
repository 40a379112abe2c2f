"""The ELMo biLM objective: forward and backward next-word prediction with a shared softmax.

Each text unit of the corpus (a paragraph) is tokenised keeping case and punctuation (the char
CNN sees every spelling), cut into pieces of at most `data.max_len - 2` tokens and framed with
<S> ... </S>. The forward LM at position t predicts token t + 1, the backward LM at t predicts
t - 1; both use one softmax over the word vocabulary (`data.max_vocab` most frequent words,
others are <unk>). Training uses the full softmax or, with `loss.sampled_softmax = S > 0`, a
sampled softmax with S log-uniform candidates shared by the batch (Jean et al., 2015), drawn
from every id but <pad>, which is never a target; eval is always the exact full softmax, and
reports forward and backward perplexity.
"""
from __future__ import annotations

import array
import collections
import dataclasses
import functools
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tl_jax import checkpoint, paths, warm_start
from tl_jax.data import clm as clm_data, tokenized, word_vectors
from tl_jax.data.shuffle import EpochOrder
from tl_jax.models import elmo
from tl_jax.progress import phase
from tl_jax.tasks import held_out_metrics, normalized, note_undefined

SPECIALS = ("<pad>", "<unk>", elmo.BOS_TOKEN, elmo.EOS_TOKEN)
PAD_ID, UNK_ID = elmo.PAD_WORD_ID, 1


@functools.cache
def _token_re() -> re.Pattern:
    """Words (with inner apostrophes/hyphens), numbers, or any single other non-space character.

    A word goes on over combining marks (Unicode category M), which `\\w` does not match: a
    decomposed "Zu\u0308rich" was three tokens ("Zu", the mark, "rich"), and so was nearly
    every word of scripts that write vowels as marks (Hindi "hindi" in Devanagari: six)."""
    word = rf"\w[\w{word_vectors.combining_marks()}]*"
    return re.compile(rf"{word}(?:['\u2019\-]{word})*|[^\w\s]")


# `_token_re` for ASCII text, which has no combining marks: the marks' class slows it down.
_ASCII_TOKEN_RE = re.compile(r"\w+(?:['\u2019\-]\w+)*|[^\w\s]")


def tokenize(text: str) -> list[str]:
    """Cased word/punctuation tokens for the biLM."""
    return (_ASCII_TOKEN_RE if text.isascii() else _token_re()).findall(text)


def build_vocab(sequences, min_count: int, max_vocab: int) -> list[str]:
    """SPECIALS + words seen at least `min_count` times, most frequent first (max `max_vocab`)."""
    counts = collections.Counter(t for seq in sequences for t in seq
                                 if t not in (elmo.BOS_TOKEN, elmo.EOS_TOKEN))
    return vocab_from_counts(counts, min_count, max_vocab)


def vocab_from_counts(counts, min_count: int, max_vocab: int) -> list[str]:
    """`build_vocab` from a {word: count} mapping (words that occur, markers left out)."""
    words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
    return list(SPECIALS) + words[:max(0, max_vocab - len(SPECIALS))]


def check_max_len(max_len: int) -> None:
    if max_len < 3:
        raise ValueError(f"data.max_len must be >= 3 (two markers and a word), got {max_len}")


def frame_units(units, max_len: int) -> list[list[str]]:
    """Tokenised units cut into <S> + at most max_len - 2 tokens + </S>."""
    check_max_len(max_len)
    out = []
    for unit in units:
        tokens = tokenize(unit)
        for s in range(0, len(tokens), max_len - 2):
            out.append([elmo.BOS_TOKEN] + tokens[s:s + max_len - 2] + [elmo.EOS_TOKEN])
    return out


def encode_units(units, max_len: int) -> tuple[list[str], np.ndarray]:
    """`frame_units` as arrays: (spellings, types (N, max_len) int32), where row n holds the
    spelling ids of piece n (`spellings[id]`) and 0 (`<pad>`) after its end.

    Each unit is tokenised and turned into ids at once, so the corpus is held as 4-byte ids,
    not as one Python string per token (about 60 bytes each).
    """
    check_max_len(max_len)
    index = {"<pad>": 0, elmo.BOS_TOKEN: 1, elmo.EOS_TOKEN: 2}
    ids, lengths = array.array("i"), array.array("i")  # every piece's ids back to back
    width = max_len - 2
    for unit in units:
        unit_ids = [index.setdefault(t, len(index)) for t in tokenize(unit)]
        for s in range(0, len(unit_ids), width):
            piece = unit_ids[s:s + width]
            ids.append(1)
            ids.extend(piece)
            ids.append(2)
            lengths.append(len(piece) + 2)
    types = np.zeros((len(lengths), max_len), np.int32)
    # Row-major, a piece's positions are consecutive: the mask picks them in the order of `ids`.
    types[np.arange(max_len)[None, :] < np.frombuffer(lengths, np.int32)[:, None]] = \
        np.frombuffer(ids, np.int32)
    return list(index), types


class Encoded:
    """Sequences stored as token-type ids (B, T) plus per-type word ids and characters.

    Characters are computed once per distinct spelling, not once per occurrence: that keeps a
    million-token corpus at a few MB instead of T * C ints per token.
    """

    def __init__(self, sequences, vocab: list[str], max_len: int, max_chars: int):
        type_index: dict[str, int] = {"<pad>": 0}
        types = np.zeros((len(sequences), max_len), np.int32)  # (N, T)
        for n, seq in enumerate(sequences):
            types[n, :len(seq)] = [type_index.setdefault(t, len(type_index)) for t in seq]
        self._set(types, list(type_index), vocab, max_chars)

    @classmethod
    def from_types(cls, types: np.ndarray, spellings: list[str], vocab: list[str],
                   max_chars: int) -> "Encoded":
        """From some rows of `encode_units`: the same as `Encoded` of those pieces as strings
        (its types numbered by first appearance in the rows, only the spellings they use).
        `types` is taken over: renumbered in place (pass a copy to keep it)."""
        # The rows' spellings in order of first appearance, found a block of rows at a time
        # (np.unique's index is 8 bytes a position) and renumbered in place.
        step = max(1, (1 << 20) // max(1, types.shape[1]))
        seen = np.zeros(len(spellings), bool)
        order = []
        for start in range(0, len(types), step):
            flat = types[start:start + step].ravel()
            used, first = np.unique(flat[flat > 0], return_index=True)
            new = ~seen[used]
            order.append(used[new][np.argsort(first[new])])
            seen[used] = True
        order = np.concatenate(order) if order else np.zeros(0, np.int32)
        renumber = np.zeros(len(spellings), np.int32)
        renumber[order] = np.arange(1, len(order) + 1, dtype=np.int32)
        types = np.ascontiguousarray(types)
        for start in range(0, len(types), step):
            types[start:start + step] = renumber[types[start:start + step]]
        self = cls.__new__(cls)
        self._set(types, ["<pad>"] + [spellings[i] for i in order], vocab, max_chars)
        return self

    def _set(self, types: np.ndarray, spellings: list[str], vocab: list[str], max_chars: int):
        word_index = {w: i for i, w in enumerate(vocab)}
        self.types = types
        self.type_words = np.array([word_index.get(t, UNK_ID) for t in spellings], np.int32)
        self.type_words[0] = PAD_ID
        self.type_chars = elmo.char_ids(spellings, max_chars)  # (n_types, C)
        self.type_chars[0] = 0  # padding positions have no characters at all
        self.lengths = np.count_nonzero(types, axis=1).astype(np.int32)  # padding only trails

    def __len__(self):
        return len(self.types)

    def batch(self, rows) -> dict[str, np.ndarray]:
        types = self.types[rows]  # (B, T)
        return {"token_ids": self.type_words[types], "chars": self.type_chars[types],
                "mask": types > 0}


class SequenceIterator:
    """Endless, shuffled, resumable batches; state = the next global batch {"epoch", "batch"}."""

    def __init__(self, data: Encoded, batch_size: int, seed: int, process_index: int = 0,
                 process_count: int = 1):
        if batch_size % process_count:
            raise ValueError(f"data.batch_size={batch_size} is not divisible by the "
                             f"{process_count} processes")
        if len(data) < batch_size:
            raise ValueError(f"only {len(data)} training sequences for data.batch_size="
                             f"{batch_size}; use more text or a smaller batch")
        self.data, self.batch_size, self.seed = data, batch_size, seed
        self.local = batch_size // process_count
        self.offset = process_index * self.local
        self.batches_per_epoch = len(data) // batch_size
        self.epoch, self.batch = 0, 0
        self._order = EpochOrder(len(data), seed)  # drawn once per epoch, not once per step

    def __iter__(self):
        return self

    def __next__(self):
        order = self._order(self.epoch)
        start = self.batch * self.batch_size + self.offset
        rows = order[start:start + self.local]
        self.batch += 1
        if self.batch == self.batches_per_epoch:
            self.epoch, self.batch = self.epoch + 1, 0
        return self.data.batch(rows)

    def get_state(self) -> dict:
        return {"epoch": int(self.epoch), "batch": int(self.batch)}

    def set_state(self, state: dict) -> None:
        epoch, batch = int(state["epoch"]), int(state["batch"])
        if epoch < 0 or not 0 <= batch < self.batches_per_epoch:
            raise ValueError(f"SequenceIterator.set_state: {state} does not fit "
                             f"{self.batches_per_epoch} batches per epoch")
        self.epoch, self.batch = epoch, batch


class EvalBatches:
    """The held-out batches as a sequence (a length for the eval bar, indexing, iteration), each
    made when it is read. The whole list was built up front at every eval: each position's
    characters as int32 (max_chars of them: 200 bytes a word at 50), for the whole held-out set
    however few batches `train.eval_batches` takes."""

    def __init__(self, data: Encoded, batch_size: int, process_index: int = 0,
                 process_count: int = 1):
        self.data, self.batch_size = data, batch_size
        self.local = batch_size // process_count
        self.offset = process_index * self.local

    def __len__(self) -> int:
        return -(-len(self.data) // self.batch_size)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"eval batch {index} of {len(self)}")
        start = (index % len(self)) * self.batch_size + self.offset
        rows = np.arange(start, start + self.local)
        n = len(self.data)
        batch = self.data.batch(np.minimum(rows, n - 1))
        batch["mask"] &= (rows < n)[:, None]  # rows past the end count for nothing
        return batch

    def __iter__(self):
        return (self[i] for i in range(len(self)))


# The first id the sampled softmax draws: <pad> (id 0) is never a target, and under log-uniform
# sampling it would be the most likely draw (9% of draws at a 2,000-word vocabulary). <unk>, <S>
# (the backward LM's last target) and </S> (the forward LM's) can all be targets and stay in.
FIRST_CANDIDATE = PAD_ID + 1


def log_uniform_log_q(ids, vocab_size: int, num_samples: int, first_id: int = FIRST_CANDIDATE):
    """log of the expected count of `ids` among num_samples log-uniform draws (with replacement)
    over ids first_id .. V - 1, the draws of `log_uniform_candidates`.

    With rank r = id - first_id and n = V - first_id candidates,
    P(id) = (log(r + 2) - log(r + 1)) / log(n + 1): roughly Zipf over frequency-sorted ids. Ids
    below first_id are never drawn; they are scored as rank 0 (a finite value) so that padding
    targets, which carry zero weight in the loss, do not turn it into NaN.
    """
    n = vocab_size - first_id
    ranks = jnp.maximum(ids - first_id, 0).astype(jnp.float32)
    p = (jnp.log(ranks + 2.0) - jnp.log(ranks + 1.0)) / jnp.log(n + 1.0)
    return jnp.log(num_samples * p)


def log_uniform_candidates(rng, vocab_size: int, num_samples: int,
                           first_id: int = FIRST_CANDIDATE):
    """(num_samples,) int32 ids drawn with replacement from the log-uniform distribution over
    first_id .. V - 1 that `log_uniform_log_q` scores."""
    n = vocab_size - first_id
    if n < 1:
        raise ValueError(f"no id to sample: vocabulary of {vocab_size} with candidates starting "
                         f"at id {first_id}")
    u = jax.random.uniform(rng, (num_samples,))
    # floor(exp(u * log(n + 1))) - 1 = r with probability log((r + 2) / (r + 1)) / log(n + 1).
    ranks = jnp.clip(jnp.floor(jnp.exp(u * jnp.log(n + 1.0))) - 1.0, 0, n - 1)
    return ranks.astype(jnp.int32) + first_id


def sampled_softmax_nll(hidden, targets, kernel, bias, rng, num_samples: int,
                        first_id: int = FIRST_CANDIDATE):
    """Per-position NLL under a sampled softmax with shared log-uniform candidates.

    hidden (N, P), targets (N,), kernel (V, P), bias (V,). Candidates are drawn from ids
    first_id .. V - 1 (by default all but <pad>, which is never a target); logits are corrected
    by the log expected counts under that distribution; a candidate equal to the target is
    masked out ("accidental hit").
    Candidates are drawn with replacement (expected count S * P(k)); bilm-tf's
    `tf.nn.sampled_softmax_loss` draws S distinct ones and corrects by each one's chance of
    being drawn at all, a difference that matters only for the most frequent ids.
    """
    v = kernel.shape[0]
    samples = log_uniform_candidates(rng, v, num_samples, first_id)
    true_logit = (jnp.sum(hidden * kernel[targets], axis=-1) + bias[targets]
                  - log_uniform_log_q(targets, v, num_samples, first_id))  # (N,)
    sampled = (hidden @ kernel[samples].T + bias[samples]
               - log_uniform_log_q(samples, v, num_samples, first_id)[None, :])  # (N, S)
    sampled = jnp.where(samples[None, :] == targets[:, None], -1e9, sampled)
    logits = jnp.concatenate([true_logit[:, None], sampled], axis=1)  # (N, 1 + S)
    return -jax.nn.log_softmax(logits, axis=-1)[:, 0]


class Task:
    """The `bilm` task (see `tl_jax/tasks/__init__.py` for the contract)."""

    progress_keys = ("forward_nll", "backward_nll")
    summary_keys = ("eval/forward_perplexity", "eval/backward_perplexity")

    def __init__(self, config, workdir):
        from tl_jax.data import sources

        self.config = config
        data_cfg = config.data
        # Before reading the corpus: 0 or negative values fail late (ZeroDivisionError, a JAX
        # shape error after compiling) or silently cut the corpus (max_units=-5).
        minimums = {"data.batch_size": (data_cfg.batch_size, 1),
                    "data.eval_batch_size": (data_cfg.eval_batch_size, 1),
                    "data.max_units": (data_cfg.max_units, 0),
                    # The specials and at least one word (with fewer every token is <unk>).
                    "data.max_vocab": (data_cfg.max_vocab, len(SPECIALS) + 1),
                    "loss.sampled_softmax": (config.loss.sampled_softmax, 0)}
        bad = [f"{k}={v!r} (must be >= {m})" for k, (v, m) in minimums.items() if v < m]
        if config.model.max_chars:
            # The character CNN's widest filter must fit in a word's characters (with its two
            # markers); the model found it only once the corpus was read, without the key.
            widest = max(w for w, _ in elmo.elmo_config(config.model.size, 1).filters)
            if config.model.max_chars < max(widest, 3):
                bad.append(f"model.max_chars={config.model.max_chars!r} (must be >= "
                           f"{max(widest, 3)}: model.size={config.model.size!r} has a character "
                           f"filter {widest} wide, and a word takes 2 marker characters)")
        if not 0.0 <= data_cfg.eval_fraction < 1.0:
            # 1 or more held every piece out, and the error was that no word of the (empty)
            # training text reached data.min_count.
            bad.append(f"data.eval_fraction={data_cfg.eval_fraction!r} (must be in [0, 1))")
        if bad:
            raise ValueError(", ".join(bad))
        from tl_jax.tasks import downstream
        downstream.check_dropout_rates(config.model)  # named by its key, not as ElmoConfig's
        show = bool(config.train.progress) and jax.process_index() == 0
        corpus_path = paths.expand(data_cfg.corpus)
        if tokenized.is_tokenized_corpus(corpus_path):
            # `tl_jax tokenize --words`: the same pieces as the text gives, without reading it.
            with phase(f"Opening the tokenised corpus {data_cfg.corpus}", show) as step:
                corpus = tokenized.TokenizedCorpus.open(corpus_path, layout="words")
                spellings, types = corpus.word_pieces(data_cfg.max_len, data_cfg.max_units)
                step.result = f"{len(types):,} pieces of at most {data_cfg.max_len} tokens"
        else:
            documents = sources.load_documents(corpus_path, data_cfg.text_field,
                                               data_cfg.group_field or None, key="data.corpus")
            units = [u for doc in documents for u in doc]
            if data_cfg.max_units:
                units = units[:data_cfg.max_units]
            spellings, types = encode_units(units, data_cfg.max_len)
            del units, documents
        # A random eval_fraction of the pieces is held out, the same ones whatever the run's
        # seed: runs with different seeds are scored on the same text.
        held = np.random.default_rng(clm_data.EVAL_SPLIT_SEED).random(len(types)) < \
            data_cfg.eval_fraction
        if data_cfg.eval_fraction > 0 and not held.any():
            # The run would report no held-out perplexity at all, without a word of why.
            raise ValueError(f"data.eval_fraction={data_cfg.eval_fraction} holds out none of "
                             f"the corpus's {len(types)} pieces: raise it (or give more text), "
                             "or set data.eval_fraction=0 for no held-out perplexity")
        train_types, eval_types = types[~held], types[held]
        del types
        saved_vocab = os.path.join(workdir, "vocab.txt") if workdir else None
        source = paths.expand(config.init_from) if config.init_from else ""
        source_vocab = os.path.join(source, "vocab.txt") if source else ""
        if saved_vocab and os.path.exists(saved_vocab) and checkpoint.has_saved_step(workdir):
            # A resumed run keeps its vocabulary; one left by a run that never saved does not.
            # Its shape is the config's and its weights the checkpoint's: init_from, read only
            # when the run started, may be gone.
            self.vocab = load_vocab(saved_vocab)
            warm_start.say_source_gone("bilm", "init_from", source,
                                       f"its vocabulary from {saved_vocab}")
        elif source_vocab and os.path.isfile(source_vocab) and os.path.isfile(
                os.path.join(source, "elmo_config.json")):
            # init_from's softmax rows stand for the words of its vocabulary: one built here
            # from this corpus would give them other words (silently, when it has as many
            # words, as two corpora capped at data.max_vocab do).
            self.vocab = load_vocab(source_vocab)
            if jax.process_index() == 0:
                print(f"[bilm] the vocabulary of init_from: {source_vocab} ({len(self.vocab)} "
                      "words); data.min_count and data.max_vocab apply to new vocabularies only",
                      flush=True)
        else:
            # Counted over the training pieces' ids: <pad> and the two markers are no words.
            counts = np.bincount(train_types.ravel(), minlength=len(spellings))
            self.vocab = vocab_from_counts(
                {spellings[i]: int(counts[i]) for i in np.flatnonzero(counts) if i > 2},
                data_cfg.min_count, data_cfg.max_vocab)
            if len(self.vocab) == len(SPECIALS):  # every token would be <unk>
                raise ValueError(f"no word of the training text occurs data.min_count="
                                 f"{data_cfg.min_count} times: the vocabulary would hold only "
                                 f"{SPECIALS}")
        self.model_config = elmo.elmo_config(
            config.model.size, len(self.vocab), dropout_rate=config.model.dropout_rate,
            forget_bias_init=config.model.get("forget_bias_init", 0.0),
            highway_gate_bias_init=config.model.get("highway_gate_bias_init", 0.0),
            **({"max_chars": config.model.max_chars} if config.model.max_chars else {}))
        self.model = elmo.BiLM(self.model_config)
        max_chars = self.model_config.max_chars
        self.train_data = Encoded.from_types(train_types, spellings, self.vocab, max_chars)
        self.eval_data = Encoded.from_types(eval_types, spellings, self.vocab, max_chars) \
            if len(eval_types) else None
        seq = data_cfg.max_len
        sampled = config.loss.sampled_softmax
        self.flops_per_example = self.model_config.flops_per_token(
            min(sampled + 1, len(self.vocab)) if sampled else None) * seq
        self.tokens_per_example = seq
        self._process = (jax.process_index(), jax.process_count())

    # -- data -------------------------------------------------------------------------------

    def example_batch(self, batch_size):
        seq, c = self.config.data.max_len, self.model_config.max_chars
        return {"token_ids": np.zeros((batch_size, seq), np.int32),
                "chars": np.zeros((batch_size, seq, c), np.int32),
                "mask": np.ones((batch_size, seq), bool)}

    def train_batches(self):
        if not hasattr(self, "_train"):
            self._train = SequenceIterator(self.train_data, self.config.data.batch_size,
                                           self.config.seed, *self._process)
        return self._train

    def eval_batches(self):
        """The held-out pieces in order (`EvalBatches`); the last batch is padded with empty
        rows (mask 0)."""
        if self.eval_data is None:
            return []
        return EvalBatches(self.eval_data, self.config.data.eval_batch_size, *self._process)

    def save(self, workdir):
        with open(os.path.join(workdir, "vocab.txt"), "w", encoding="utf-8") as f:
            f.write("\n".join(self.vocab) + "\n")
        # elmo_features.load_elmo rebuilds the model from these two files and the checkpoint.
        with open(os.path.join(workdir, "elmo_config.json"), "w") as f:
            json.dump(dataclasses.asdict(self.model_config), f, indent=1)

    # -- model ------------------------------------------------------------------------------

    def init_variables(self, rng, batch):
        return self.model.init({"params": rng, "dropout": rng}, batch["chars"], batch["mask"])

    def init_params(self, params, rng):
        del rng
        if not self.config.init_from:
            return params
        return warm_start.warm_start(params, paths.expand(self.config.init_from),
                                     self.model_config)

    def _nll(self, params, batch, rng, train):
        """Summed forward NLL, backward NLL and the number of predicted tokens."""
        outputs, _ = self.model.apply({"params": params}, batch["chars"], batch["mask"],
                                      train=train, rngs={"dropout": rng})
        ids = batch["token_ids"]
        # Position t predicts t + 1 forwards and t - 1 backwards; both need token t + 1 / t
        # to be real, i.e. mask[:, 1:] (padding only trails).
        weights = batch["mask"][:, 1:].astype(jnp.float32)  # (B, T-1)
        pairs = ((outputs["forward"][:, :-1], ids[:, 1:]),
                 (outputs["backward"][:, 1:], ids[:, :-1]))
        samples = self.config.loss.sampled_softmax
        nlls = []
        for i, (hidden, targets) in enumerate(pairs):
            if train and samples:
                p = hidden.shape[-1]
                nll = sampled_softmax_nll(
                    hidden.reshape(-1, p), targets.reshape(-1), params["softmax_kernel"],
                    params["softmax_bias"], jax.random.fold_in(rng, i), samples
                ).reshape(targets.shape)  # (B, T-1)
            else:
                # The full softmax gives <pad> no probability (BiLM.logits): padding targets,
                # which weigh 0, are scored as FIRST_CANDIDATE so their NLL stays finite.
                logits = self.model.apply({"params": params}, hidden, method=elmo.BiLM.logits)
                nll = optax.softmax_cross_entropy_with_integer_labels(
                    logits, jnp.where(targets == PAD_ID, FIRST_CANDIDATE, targets))
            nlls.append(jnp.sum(nll * weights))
        return nlls[0], nlls[1], jnp.sum(weights)

    def loss_normalizers(self, batch):
        """The predicted tokens per direction: sentences have different lengths, so the
        micro-batches of one step hold different counts."""
        return {"tokens": jnp.sum(batch["mask"][:, 1:].astype(jnp.float32))}

    def loss_fn(self, params, batch, rng, train, normalizers=None):
        fwd, bwd, count = self._nll(params, batch, rng, train)
        loss = normalized(fwd + bwd, count, normalizers, "tokens") / 2.0
        return loss, {"forward_nll": (fwd, count), "backward_nll": (bwd, count)}

    def predict_fn(self, params, batch):
        fwd, bwd, count = self._nll(params, batch, jax.random.PRNGKey(0), False)
        return {"forward_nll": fwd[None], "backward_nll": bwd[None], "tokens": count[None]}

    def evaluate(self, batches_and_outputs, workdir, step):
        """Exact held-out perplexities exp(total NLL / total tokens), per direction."""
        del workdir, step
        result = perplexities(out for _, out in batches_and_outputs)
        if any(np.isnan(v) for v in result.values()):
            note_undefined(self, [f"eval/{k}" for k in result],
                           "the eval batches hold no token to predict")
        return result

    @staticmethod
    def eval_metric_names(config) -> tuple[str, ...]:
        """`loss_fn`'s NLLs and `evaluate`'s perplexities (`tasks.eval_metric_names`)."""
        return held_out_metrics(config, (
            "forward_nll", "backward_nll", "forward_perplexity", "backward_perplexity"))


def perplexities(outputs) -> dict[str, float]:
    """Forward/backward perplexity from `predict_fn` outputs; NaN when they hold no token to
    predict (0/0: no perplexity), under the same keys."""
    totals = collections.Counter()
    for out in outputs:
        for k in ("forward_nll", "backward_nll", "tokens"):
            totals[k] += float(np.sum(out[k]))
    if not totals["tokens"]:
        return {"forward_perplexity": float("nan"), "backward_perplexity": float("nan")}
    return {"forward_perplexity": float(np.exp(totals["forward_nll"] / totals["tokens"])),
            "backward_perplexity": float(np.exp(totals["backward_nll"] / totals["tokens"]))}


def load_vocab(path) -> list[str]:
    """A vocab.txt written by `Task.save` (one word per line, specials first)."""
    with open(path, encoding="utf-8") as f:
        words = [line.rstrip("\n") for line in f if line.rstrip("\n")]
    if tuple(words[:len(SPECIALS)]) != SPECIALS:
        raise ValueError(f"{path}: expected the first lines to be {SPECIALS}")
    return words
