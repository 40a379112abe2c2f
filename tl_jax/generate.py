"""Text generation and prompt scoring with a GPT decoder.

Generation is two jitted programs: the first zeroes the key/value cache and runs a prefill over
the (left-padded) prompts; the second produces further tokens in a `lax.while_loop` whose body is
a one-token step that reads and writes the cache, and resumes from the state (cache, tokens, done
rows) it returned last time. Without a host-side stop check the loop runs in one call to
`max_new_tokens` (or until every row has produced a stop token); with one (`stop_when`, e.g. a
stop string that the model writes across several tokens) it runs `check_every` tokens at a time,
and between calls the host marks the rows whose tokens now satisfy the check as done. Either
way the host never dispatches one call per token and does no tracing once a shape has been
compiled: the segment's end is an argument, not a shape. Shapes are fixed for a call, so the
programs are compiled once per (batch, prompt bucket, max_new_tokens, sampling) and reused;
`Generator.traces` counts traces so tests can prove it.

Left padding: row `b`'s prompt occupies the last `len_b` of `P` slots. Its real tokens get
positions `0 .. len_b-1` (as if unpadded) and a key mask hides the pad slots, so a padded prompt
continues exactly like the same prompt alone.

Scoring (`score`) returns the log-likelihood of continuations given contexts: GPT-2's zero-shot
recipe compares these across label words (`classify_zero_shot`).
"""
import dataclasses
import numbers
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from tl_jax import paths
from tl_jax.progress import bar as progress_bar
from tl_jax.models import losses
from tl_jax.models.gpt import GPT, check_tokens, init_cache


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How the next token is picked. `temperature=0` is greedy (argmax).

    top_k: keep only the k most likely tokens (0 = all).
    top_p: keep the smallest set of most likely tokens whose probability reaches p (1.0 = all).
    """

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self):
        problem = self.problem(self.temperature, self.top_k, self.top_p)
        if problem:
            raise ValueError(f"Sampling: {problem[0]} {problem[1]}")

    @staticmethod
    def problem(temperature: float, top_k: int, top_p: float) -> tuple[str, str] | None:
        """(the setting, what is wrong with it) for the first one out of range, else None. The
        dataclass raises naming the field; `tl_jax generate` names its flag (`--top_p`)."""
        if not 0.0 <= temperature < float("inf"):  # NaN too: it samples garbage
            return "temperature", f"must be a finite number >= 0, got {temperature}"
        if top_k < 0:
            return "top_k", f"must be >= 0, got {top_k}"
        if not 0.0 < top_p <= 1.0:
            return "top_p", f"must be in (0, 1], got {top_p}"
        return None


_MASKED = -1e30  # finite, so an all-masked row cannot produce NaNs


def filter_logits(logits, top_k: int = 0, top_p: float = 1.0):
    """Masks (to a large negative value) tokens outside the top-k and the top-p nucleus.

    logits: (B, V) float. The most likely token always survives.
    """
    logits = logits.astype(jnp.float32)
    if top_k and top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]  # (B, 1)
        logits = jnp.where(logits < kth, _MASKED, logits)
    if top_p < 1.0:
        order = jnp.argsort(-logits, axis=-1)  # (B, V), most likely first
        sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        # Probability mass strictly before each token: keep while it is still below p.
        before = jnp.cumsum(probs, axis=-1) - probs
        keep_sorted = before < top_p
        keep = jnp.zeros_like(keep_sorted).at[
            jnp.arange(logits.shape[0])[:, None], order
        ].set(keep_sorted)
        logits = jnp.where(keep, logits, _MASKED)
    return logits


def sample_tokens(logits, rng, sampling: Sampling):
    """Picks one token per row from (B, V) logits. `rng`: one key for the whole batch, or (B,
    2) keys, one per row, so that a row's draw does not depend on the other rows."""
    if sampling.temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = filter_logits(logits / sampling.temperature, sampling.top_k, sampling.top_p)
    if rng.ndim == 2:
        return jax.vmap(jax.random.categorical)(rng, logits).astype(jnp.int32)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


def _fold_rows(keys, i):
    """Each row's key (B, 2) folded with step `i`."""
    return jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, i)


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int, bucket: int = 8):
    """Left-pads prompts to a common length rounded up to `bucket` (fewer distinct shapes).

    Returns tokens (B, P) int32, mask (B, P) bool, positions (B, P) int32, lengths (B,).
    """
    if not prompts:
        raise ValueError("generate: no prompts given")
    lengths = np.array([len(p) for p in prompts], dtype=np.int32)
    if lengths.min() == 0:
        raise ValueError(f"generate: prompt {int(np.argmin(lengths))} is empty")
    width = int(-(-lengths.max() // bucket) * bucket)
    tokens = np.full((len(prompts), width), pad_id, dtype=np.int32)
    mask = np.zeros((len(prompts), width), dtype=bool)
    for b, prompt in enumerate(prompts):
        tokens[b, width - len(prompt):] = prompt
        mask[b, width - len(prompt):] = True
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int32)  # (B, P)
    return tokens, mask, positions, lengths


class Generator:
    """Cached incremental decoding for one model and parameter set.

        gen = Generator(model, params)
        out = gen.generate([[5, 6, 7], [8]], max_new_tokens=20, sampling=Sampling(0.8, top_k=40))

    `num_tokens`: the tokenizer's vocabulary size when the model's output has more rows (a
    vocabulary padded to a round size, as GPT checkpoints often are): those rows are never
    picked, as they decode to nothing. None: every row is a token.

    After each `generate`, `last_steps` is how many tokens per row the decoding ran for (the
    prefill's included): `max_new_tokens`, or fewer when every row stopped early.
    """

    def __init__(self, model: GPT, params, pad_id: int = 0, num_tokens: int | None = None):
        vocab_size = model.config.vocab_size
        if num_tokens is not None and not 0 < num_tokens <= vocab_size:
            raise ValueError(f"Generator: num_tokens={num_tokens} must be in [1, the model's "
                             f"vocab_size={vocab_size}]")
        self.model = model
        self.params = params
        self.pad_id = pad_id
        self.num_tokens = None if num_tokens == vocab_size else num_tokens
        self.traces = {"prefill": 0, "step": 0}
        self.last_steps = 0
        self._start = jax.jit(
            self._start_fn, static_argnames=("max_new_tokens", "sampling", "return_logits"))
        # The state (cache and all) is donated: each segment writes it in place instead of
        # copying the cache (CPU ignores donation without a word where it cannot use it).
        self._resume = jax.jit(self._resume_fn, static_argnames=("sampling",),
                               donate_argnames=("state",))

    def _decode(self, params, cache, tokens, positions, key_mask):
        (outputs, _), mutated = self.model.apply(
            {"params": params, "cache": cache}, tokens, positions=positions, key_mask=key_mask,
            decode=True, mutable=["cache"], logits=False,
        )
        # The next-token logits of the last position only, through the tied embedding as the
        # model's own output (float32): the prefill's logits over the whole prompt were 1.6 GB
        # at GPT-2's vocabulary for 8 prompts of 1,016 tokens, all but the last row unused.
        last = outputs["hidden"][:, -1].astype(jnp.float32)  # (B, E)
        embedding = nn.unbox(params["wte"]["embedding"])  # (params straight from `init` too)
        logits = last @ jnp.asarray(embedding, jnp.float32).T  # (B, V)
        if self.num_tokens is not None:
            logits = jnp.where(jnp.arange(logits.shape[-1]) < self.num_tokens, logits, _MASKED)
        return logits, mutated["cache"]

    def _pick(self, logits, rng, done, stop_ids, sampling):
        token = sample_tokens(logits, rng, sampling)
        token = jnp.where(done, self.pad_id, token)
        done = done | jnp.isin(token, stop_ids)
        return token, done

    def _prefill_fn(self, params, cache, tokens, positions, key_mask, rng, stop_ids, sampling):
        self.traces["prefill"] += 1  # runs at trace time only
        logits, cache = self._decode(params, cache, tokens, positions, key_mask)
        done = jnp.zeros(tokens.shape[:1], bool)
        token, done = self._pick(logits, rng, done, stop_ids, sampling)
        return token, done, cache, logits

    def _step_fn(self, params, cache, token, lengths, i, key_mask, key, done, stop_ids,
                 sampling):
        """Feeds generated token i-1 (at position len + i - 1) and picks token i."""
        self.traces["step"] += 1  # runs at trace time only
        position = lengths + i - 1  # (B,)
        logits, cache = self._decode(params, cache, token[:, None], position[:, None], key_mask)
        next_token, done = self._pick(logits, _fold_rows(key, i), done, stop_ids, sampling)
        return next_token, done, cache, logits

    def _start_fn(self, params, tokens, positions, key_mask, key, stop_ids, max_new_tokens,
                  sampling, return_logits):
        """Prefill: token 0 of every row. Returns the decoding state the loop resumes from:
        (i=1, last token, done, cache, (B, new) tokens, (new, B, V) logits or None)."""
        # The zero cache is built inside the program: `init_cache` traces the model to find
        # the cache's shapes, ~45 ms of host time for GPT tiny, which here happens only when
        # the program is traced, not on every call.
        cache = init_cache(self.model, tokens.shape[0], key_mask.shape[1])
        token, done, cache, logits = self._prefill_fn(
            params, cache, tokens, positions, key_mask, _fold_rows(key, 0), stop_ids, sampling)
        batch = token.shape[0]
        out = jnp.full((batch, max_new_tokens), self.pad_id, jnp.int32).at[:, 0].set(token)
        all_logits = None
        if return_logits:
            all_logits = jnp.zeros((max_new_tokens,) + logits.shape, jnp.float32).at[0].set(
                logits)
        return jnp.int32(1), token, done, cache, out, all_logits

    def _resume_fn(self, params, state, stop_rows, end, lengths, key_mask, key, stop_ids,
                   sampling):
        """Tokens i .. end-1 in one `lax.while_loop`, from the state `_start_fn` or the last
        call returned; `stop_rows` (B,) marks rows the host has ended (they produce pad).

        The loop stops early once every row is done (a stop token, or ended by the host).
        Returns the new state; its `i` is how many tokens per row have been decoded.
        """
        i, token, done, cache, tokens, all_logits = state
        done = done | stop_rows

        def cond(carry):
            i, _, done, *_ = carry
            return (i < end) & ~jnp.all(done)

        def body(carry):
            i, token, done, cache, tokens, all_logits = carry
            token, done, cache, logits = self._step_fn(
                params, cache, token, lengths, i, key_mask, key, done, stop_ids, sampling)
            tokens = jax.lax.dynamic_update_slice(tokens, token[:, None], (0, i))
            if all_logits is not None:
                all_logits = all_logits.at[i].set(logits)
            return i + 1, token, done, cache, tokens, all_logits

        return jax.lax.while_loop(cond, body, (i, token, done, cache, tokens, all_logits))

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                 sampling: Sampling = Sampling(), stop_tokens: Sequence[int] = (),
                 seed: int = 0, return_logits: bool = False,
                 stop_when: Callable[[list[int]], bool] | None = None, check_every: int = 16,
                 row_ids: Sequence[int] | None = None):
        """Continues each prompt by up to `max_new_tokens` tokens.

        Returns a list of new-token lists, one per prompt; a row ends after its first stop
        token (which is included). With `return_logits`, also a list of (B, V) numpy logits,
        one per decoding step that ran: the model's next-token logits that step, before
        temperature, top-k and top-p (rows past `num_tokens` masked); the token was drawn from
        them after those filters.
        Deterministic for a given seed and sampling setting. Each row draws from its own key,
        `seed` folded with its row id (`row_ids[b]`; by default its index `b` in `prompts`), so
        a row's tokens do not depend on the other rows in the batch or on the batch's size: a
        caller that splits many prompts into batches passes each prompt's index among them, and
        gets the same completions whatever the batch size (`run_generate` does).

        `stop_when(tokens) -> bool`: a check on the host for what no single stop token shows,
        e.g. that a row's decoded text holds a stop string the model wrote across several
        tokens. Decoding then runs `check_every` tokens at a time; after each run, a row whose
        new tokens so far pass the check ends at the shortest such prefix (its last token
        included), produces only pad from then on, and the loop stops once every row has
        ended. The check must stay true once true (as tokens are appended), so that where a
        row ends does not depend on `check_every`: a row ends at its stop token or at the
        shortest passing prefix, whichever comes first (the check is never called on tokens past
        a row's stop token). The tokens a row produces before it ends are those it produces
        without the check: the other rows, the seed and the compiled programs are the same.
        """
        cfg = self.model.config
        if max_new_tokens < 1:
            raise ValueError(f"generate: max_new_tokens must be >= 1, got {max_new_tokens}")
        if check_every < 1:
            raise ValueError(f"generate: check_every must be >= 1, got {check_every}")
        tokens, mask, positions, lengths = left_pad(prompts, self.pad_id)
        check_tokens(tokens, cfg, where="generate prompts")
        batch, width = tokens.shape
        # The model reads the prompt and every new token but the last (which nothing follows):
        # positions 0 .. prompt + max_new_tokens - 2, so prompt + max_new_tokens may be
        # max_len + 1, and the cache needs one slot fewer than the tokens.
        if lengths.max() + max_new_tokens > cfg.max_len + 1:
            raise ValueError(
                f"generate: prompt length {int(lengths.max())} + max_new_tokens {max_new_tokens} "
                f"is {int(lengths.max()) + max_new_tokens} tokens; the model's max_len "
                f"{cfg.max_len} allows at most {cfg.max_len + 1} (the last new token is not "
                "fed back through the model)"
            )
        # Left padding can push the cache past max_len even when every row fits; shrink the
        # padding bucket in that case rather than failing.
        if width + max_new_tokens - 1 > cfg.max_len:
            tokens, mask, positions, lengths = left_pad(prompts, self.pad_id, bucket=1)
        key_mask = jnp.asarray(
            np.concatenate([mask, np.ones((batch, max_new_tokens - 1), bool)], 1))
        stop_ids = jnp.asarray(np.array(list(stop_tokens) or [-1], dtype=np.int32))
        stop_set = set(int(s) for s in stop_tokens)
        if row_ids is None:
            row_ids = range(batch)
        row_ids = np.asarray(list(row_ids), dtype=np.int64)
        if row_ids.shape != (batch,) or (row_ids < 0).any() or (row_ids >= 2 ** 32).any():
            raise ValueError(f"generate: row_ids must be {batch} integers in [0, 2**32), one per "
                             f"prompt; got {row_ids.tolist()}")
        key = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(
            jax.random.PRNGKey(seed), jnp.asarray(row_ids.astype(np.uint32)))  # (B, 2)
        lengths = jnp.asarray(lengths)
        state = self._start(
            self.params, jnp.asarray(tokens), jnp.asarray(positions), key_mask, key, stop_ids,
            max_new_tokens=max_new_tokens, sampling=sampling, return_logits=return_logits)

        ends = [None] * batch  # where the host check ended each row (its length)
        stop_rows = np.zeros(batch, bool)
        settled = np.zeros(batch, bool)  # ended by a stop token, and checked up to it
        checked = 0  # every row's first `checked` tokens failed the check
        steps = 1
        while True:
            # Segments end at multiples of check_every tokens (the prefill's token included).
            end = max_new_tokens if stop_when is None else min(
                (steps // check_every + 1) * check_every, max_new_tokens)
            state = self._resume(self.params, state, jnp.array(stop_rows), jnp.int32(end),
                                 lengths, key_mask, key, stop_ids, sampling=sampling)
            steps, done, out = jax.device_get((state[0], state[2], state[4]))
            steps = int(steps)
            if stop_when is None:
                break
            for b in range(batch):
                if ends[b] is not None or settled[b]:  # ended here before, or checked to its stop
                    continue
                row = out[b, :steps].tolist()
                if done[b]:
                    # A stop token in this segment: the check still applies to the tokens up to
                    # it, which a shorter segment would have checked before the row stopped.
                    settled[b] = True
                    row = row[:next(n for n, t in enumerate(row) if t in stop_set) + 1]
                if stop_when(row):  # the shortest passing prefix is among the new tokens
                    ends[b] = next(n for n in range(checked + 1, steps + 1)
                                   if stop_when(row[:n]))
                    stop_rows[b] = True
            checked = steps
            if steps >= max_new_tokens or all(done | stop_rows):
                break
        self.last_steps = steps
        results = []
        for b, row in enumerate(out[:, :steps]):
            if ends[b] is not None:
                results.append(row[:ends[b]].tolist())
                continue
            kept = []
            for t in row.tolist():
                kept.append(t)
                if t in stop_set:
                    break
            results.append(kept)
        if return_logits:
            return results, list(np.asarray(state[5])[:steps])
        return results


_SCORE_FNS = {}


def _score_fn(model: GPT, num_tokens: int | None = None):
    """One jitted scorer per (model config, num_tokens), so repeated `score` calls reuse
    compilations. `num_tokens`: the softmax is over the first `num_tokens` rows only."""
    key = (model.config, num_tokens)
    if key in _SCORE_FNS:
        return _SCORE_FNS[key]

    @jax.jit
    def fn(params, tokens, weights):
        # The log-likelihoods through the tied embedding a chunk of positions at a time, as the
        # training loss: the whole (B, L-1, V) logits (1.6 GB at GPT-2's vocabulary for 16 rows
        # of 512 tokens), and as much again for their log-softmax, are never held.
        outputs, _ = model.apply({"params": params}, tokens[:, :-1], logits=False)
        embedding = nn.unbox(params["wte"]["embedding"])
        # Rows past the tokenizer's vocabulary get no probability, as `Generator` masks them:
        # a bias that sends their logits to `_MASKED` (not a slice: no copy of the table).
        bias = (None if num_tokens is None else
                jnp.where(jnp.arange(embedding.shape[0]) < num_tokens, 0.0, _MASKED))
        nll, _ = losses.tied_softmax_cross_entropy(
            outputs["hidden"], embedding, tokens[:, 1:], bias=bias)  # (B, L-1)
        return -(nll * weights[:, 1:]).sum(-1)

    _SCORE_FNS[key] = fn
    return fn


def score(model: GPT, params, contexts: Sequence[Sequence[int]],
          continuations: Sequence[Sequence[int]], batch_size: int = 16, bucket: int = 16,
          progress: bool | None = False, num_tokens: int | None = None):
    """Log-likelihood of each continuation given its context: (N,) float64 sums of log p.

    Contexts longer than fits are truncated from the left (the continuation is kept whole).
    Sequences are right-padded to a bucketed length; causal attention makes the padding
    invisible to the scored positions. `progress`: a bar over the batches on stderr (None:
    only when stderr is a terminal, as `tl_jax extract`'s; False: none). `num_tokens`: the
    tokenizer's vocabulary size when the model's output has more rows, as for `Generator`: the
    probabilities are over those ids only (the padding rows get none), and a continuation
    holding a later id is refused. None: every row is a token.
    """
    cfg = model.config
    if len(contexts) != len(continuations):
        raise ValueError(
            f"score: {len(contexts)} contexts but {len(continuations)} continuations"
        )
    if num_tokens is not None and not 0 < num_tokens <= cfg.vocab_size:
        raise ValueError(f"score: num_tokens={num_tokens} must be in [1, the model's "
                         f"vocab_size={cfg.vocab_size}]")
    num_tokens = None if num_tokens == cfg.vocab_size else num_tokens
    rows, weights = [], []
    for i, (ctx, cont) in enumerate(zip(contexts, continuations)):
        if not ctx:
            raise ValueError(f"score: context {i} is empty; give at least one token (e.g. EOS)")
        if not cont:
            raise ValueError(f"score: continuation {i} is empty")
        if num_tokens is not None and max(cont) >= num_tokens:
            raise ValueError(f"score: continuation {i} holds token id {max(cont)}, past the "
                             f"num_tokens={num_tokens} that get probability")
        if len(cont) > cfg.max_len:  # with one context token: max_len + 1, the last not fed
            raise ValueError(
                f"score: continuation {i} has {len(cont)} tokens; the model's max_len "
                f"{cfg.max_len} allows at most {cfg.max_len} after a context token"
            )
        ctx = list(ctx)[-(cfg.max_len + 1 - len(cont)):]
        rows.append(ctx + list(cont))
        weights.append([0.0] * len(ctx) + [1.0] * len(cont))
    if not rows:  # nothing to score (np.concatenate of no batches raised "need at least one")
        return np.zeros(0, np.float64)
    fn = _score_fn(model, num_tokens)
    results = []
    starts = range(0, len(rows), batch_size)
    # Counted by hand under `with`, so that Ctrl-C or an error in a batch ends a line-mode bar
    # saying so (a bar iterated by the `for` is freed, and closed as merely stopped, first).
    with progress_bar(total=len(starts), desc="score", unit="batch", leave=False,
                      disable=True if len(starts) < 2 else None if progress is None
                      else not progress) as bar:
        for start in starts:
            chunk = rows[start:start + batch_size]
            n = len(chunk)
            width = min(int(-(-max(map(len, chunk)) // bucket) * bucket), cfg.max_len + 1)
            tokens = np.zeros((batch_size, width), np.int32)  # fixed batch: one compile a width
            w = np.zeros((batch_size, width), np.float32)
            for j, (row, wt) in enumerate(zip(chunk, weights[start:start + n])):
                tokens[j, :len(row)] = row
                w[j, :len(wt)] = wt
            check_tokens(tokens[:, :-1], cfg, where="score inputs")
            check_tokens(tokens[:, 1:], cfg, where="score targets")
            results.append(np.asarray(fn(params, jnp.asarray(tokens), jnp.asarray(w)))[:n])
            bar.update(1)
    return np.concatenate(results).astype(np.float64)


def classify_zero_shot(model: GPT, params, prompts: Sequence[Sequence[int]],
                       label_continuations: Sequence[Sequence[int]], normalize: bool = False,
                       batch_size: int = 8, progress: bool | None = False,
                       num_tokens: int | None = None):
    """Zero-shot classification: the label whose continuation is most likely after the prompt.

    Returns (predictions (N,) int, scores (N, num_labels)). With `normalize`, scores are
    per-token averages so multi-token labels are not penalised for length. `batch_size` prompts
    (each with every continuation) go through the model at a time. `num_tokens`: as `score`'s.
    """
    if not label_continuations:  # (a batch of 0 rows per prompt: "range() arg 3 must not be zero")
        raise ValueError("classify_zero_shot: no label continuations to choose between")
    contexts = [p for p in prompts for _ in label_continuations]
    conts = [c for _ in prompts for c in label_continuations]
    scores = score(model, params, contexts, conts,
                   batch_size=batch_size * len(label_continuations), progress=progress,
                   num_tokens=num_tokens)
    scores = scores.reshape(len(prompts), len(label_continuations))
    if normalize:
        scores = scores / np.array([len(c) for c in label_continuations])[None, :]
    return scores.argmax(-1), scores


# ================================================================================================
# `tl_jax generate`: load a model, then complete or score prompts
# ================================================================================================


def load_model(path: str, caller: str = "generate", on_device: bool = True):
    """(GPT model, params, BPETokenizer) from a tl_jax `clm` workdir or a GPT-2 directory (or
    its `tl_jax convert` weights directory).

    A workdir needs `config.json`, `tokenizer/` and `checkpoints/` (the newest good one is used);
    a Hugging Face directory needs `config.json`, `model.safetensors` and vocab.json+merges.txt
    (or tokenizer.json).

    The params are read into host numpy. With `on_device` (generation) they are then placed on
    the default device once; without it (`tl_jax convert`, which only writes them out again)
    they stay numpy and no device holds a copy of the model.
    """
    import os

    import ml_collections

    from tl_jax import checkpoint, warm_start
    from tl_jax.data import bpe

    path = paths.expand(path)
    if warm_start.is_tl_workdir(path):
        saved = checkpoint.load_run_config(path)
        if saved.get("task") != "clm":
            raise ValueError(
                f"{path} was trained with task={saved.get('task')!r}; generation needs a 'clm' "
                "(GPT language model) workdir")
        from tl_jax.tasks.clm import gpt_config_from
        tokenizer = bpe.BPETokenizer.load(os.path.join(path, "tokenizer"))
        config = gpt_config_from(ml_collections.ConfigDict(saved["model"]), tokenizer.vocab_size)
        flat, step = checkpoint.load_params_from_workdir(path)  # host numpy
        params = {}
        for name, value in flat.items():
            node = params
            *parents, leaf = name.split("/")
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = value
        print(f"[{caller}] {path}: checkpoint step {step}", flush=True)
    elif warm_start.is_hf_directory(path):
        from tl_jax.interop import gpt2
        config, params = gpt2.load_pretrained(path)
        tokenizer = bpe.BPETokenizer.load(path)
    else:
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} does not exist")
        raise FileNotFoundError(
            f"{path} is neither a tl_jax workdir (with checkpoints/) nor a GPT-2 directory "
            "(with config.json)")
    if tokenizer.vocab_size > config.vocab_size:
        raise ValueError(f"{path}: tokenizer has {tokenizer.vocab_size} tokens but the model only "
                         f"{config.vocab_size}")
    if on_device:
        # Once, here: numpy params would be copied to the device again by every call of a
        # jitted function (each decoding chunk, each scored batch).
        params = jax.device_put(params)
    return GPT(config), params, tokenizer


def stop_token_ids(tokenizer, stop_strings: Sequence[str]) -> list[int]:
    """Ids of the vocabulary tokens whose text holds one of `stop_strings`.

    The decoding loop ends a row at any of them as soon as it is produced: "\\n" is GPT-2's
    token 198, but also inside "\\n\\n" (628) and ".\\n". A stop string that the model writes
    across several tokens is not among them; `stop_string_check` ends such a row from the host
    (every `check_every` tokens), and `cut_at_stop` ends the completion's text there.
    """
    for text in stop_strings:
        if not text:
            raise ValueError("generate: an empty stop string would end every completion at once")
    if not stop_strings:
        return []
    pieces = tokenizer.hf_tokenizer.decode_batch([[i] for i in range(tokenizer.vocab_size)],
                                                 skip_special_tokens=True)
    return [i for i, piece in enumerate(pieces) if any(s in piece for s in stop_strings)]


def stop_string_check(tokenizer, stop_strings: Sequence[str]):
    """A `Generator.generate(stop_when=...)` check: whether the text of a row's new tokens holds
    any of `stop_strings`, so the row can end even where the model spells the string across
    several tokens (where no stop token id shows it).

    Only text that more tokens cannot change counts: a byte-level BPE decodes a token prefix to
    a prefix of the full text, except for an unfinished UTF-8 character at its end, which
    decodes to U+FFFD for now; those are left out. So once the check holds, the first stop
    string in the text is where it will be in the completion of the whole row, and the text
    `cut_at_stop` keeps is the same as if the row had run to `max_new_tokens`.
    """
    stop_strings = list(stop_strings)

    def holds_stop(tokens: Sequence[int]) -> bool:
        return _stop_at(tokenizer.decode(tokens).rstrip("\ufffd"), stop_strings) >= 0

    return holds_stop


def _stop_at(text: str, stop_strings: Sequence[str]) -> int:
    """Where the first of `stop_strings` in `text` starts (-1: none of them is in it), leaving
    out the `<|endoftext|>` a row shows where it runs past its end (`stop_at_eos=False`): that
    is a token, not text, which no stop token holds; `--stop=end` (in "<|endoftext|>") ended
    such a row at it and cut its completion to "...<|"."""
    from tl_jax.data.bpe import EOS
    text = text.replace(EOS, "\0" * len(EOS))  # as long as before: the indices stay the text's
    cuts = [text.find(s) for s in stop_strings if s in text]
    return min(cuts) if cuts else -1


def cut_at_stop(completion: str, stop_strings: Sequence[str]) -> str:
    """`completion` up to (not including) the first occurrence of any of `stop_strings` (not
    inside an `<|endoftext|>`)."""
    cut = _stop_at(completion, stop_strings)
    return completion[:cut] if cut >= 0 else completion


def _prompt_rows(name: str, path: str, suffix: str, text_field: str,
                 label_field: str) -> list[dict]:
    """The prompts (and gold labels, where the row has `label_field`) of a .jsonl, .csv or
    .tsv prompt file, read as the classification readers read rows: a CSV/TSV has a header
    row naming its columns (a TSV is not quoted, as GLUE's files), so an SST-2-style
    `sentence<TAB>label` file scores with `text_field="sentence"`. Before, a table was read as
    plain-text lines: its header became a prompt and every prompt kept its tab and label."""
    import pathlib

    from tl_jax.data.readers import (DataFormatError, _delimited_rows, _jsonl_rows, _text,
                                     label_text)
    file = pathlib.Path(path)
    rows = (_jsonl_rows(file) if suffix == ".jsonl" else
            _delimited_rows(file, "\t" if suffix == ".tsv" else ","))
    records = []
    try:
        for lineno, row in rows:
            if text_field not in row:
                raise DataFormatError(name, lineno,
                                      f"missing field {text_field!r} (has {sorted(row)})")
            if row[text_field] is None:  # not the prompt "None"
                raise DataFormatError(name, lineno, f"field {text_field!r} is null")
            gold = row.get(label_field)
            gold = None if gold is None else label_text(gold)
            records.append({"text": _text(row[text_field], name, lineno, text_field),
                            "label": gold or None,  # a blank CSV cell: unlabelled
                            "has_label_field": label_field in row})
    except UnicodeDecodeError as e:
        raise DataFormatError.not_utf8(path, e) from None
    return records


def run_generate(model_dir: str, mode: str = "complete", prompts: Sequence[str] = (),
                 prompt_file: str = "", text_field: str = "text", label_field: str = "label",
                 template: str = "{text}", choices: Sequence[str] = (),
                 labels: Sequence[str] = (),
                 max_new_tokens: int | None = None, temperature: float | None = None,
                 top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                 stop_at_eos: bool | None = None,
                 stop: Sequence[str] = (), batch_size: int = 8, output: str = "") -> list[dict]:
    """The `tl_jax generate` command.

    mode="complete": continues each prompt (GPT-2's zero-shot tasks, e.g. a template ending in
      "TL;DR:" for summaries) and prints prompt + completion. A row stops at `<|endoftext|>`
      (unless `stop_at_eos=False`) and where its text first holds any of `stop` (strings, e.g.
      "\\n"; the completion ends before it): decoding of that row ends there too, at once for a
      token holding a stop string, and within 16 tokens (the host checks the text that often)
      for one the model writes across several tokens. A prompt longer than
      `max_len + 1 - max_new_tokens` tokens (the last new token is not fed back through the
      model) keeps its end; a warning says so, and its result records `prompt_tokens_cut`.
    mode="score": for each prompt, the log-likelihood of each of `choices` as its continuation;
      the prediction is the most likely choice (zero-shot classification). If the prompt file
      has `label_field`, accuracy over the examples is printed too (a note says so where a
      `label_field` other than "label" is in none of its rows); `labels` names the label
      each choice stands for (e.g. choices " good", " bad" for labels pos, neg), else a choice
      is its own label (without surrounding spaces). Every gold label must be one of them.

    `prompts`, `choices`, `labels` and `stop` are lists of strings (a string alone is refused:
    each of its characters would be one).
    Prompts come from `prompts` and/or `prompt_file` (plain text: one prompt per line; .jsonl:
    `text_field` of each object; .csv/.tsv: column `text_field` under a header row; a .json
    file is refused), each formatted with `template`
    (`{text}` is the prompt; a literal backslash-n becomes a newline, e.g. "{text}\\nTL;DR:").
    Results are returned (and written to `output` as jsonl when given, each as it is printed,
    so an interrupted run keeps the ones done).
    The completion flags `max_new_tokens` (default 64), `temperature` (0.0: greedy), `top_k` (0:
    off), `top_p` (1.0: off), `seed` (0), `stop_at_eos` (True) and `stop` are None / empty when
    not given: score mode refuses them, since it writes no completion for them to shape (even
    at their completion default: `temperature=0.0` given says the caller meant it to do
    something).
    Flags are checked before the model is loaded.
    """
    import json
    import os
    import sys

    # -- flags, before anything is loaded -------------------------------------------------------
    if mode not in ("complete", "score"):
        raise ValueError(f"generate: --mode={mode!r}; expected complete or score")
    for name, value in (("batch_size", batch_size), ("max_new_tokens", max_new_tokens),
                        ("top_k", top_k), ("seed", seed)):
        # (A float from Python failed after the model loaded: "slice indices must be
        # integers".)
        if value is not None and (isinstance(value, bool)
                                  or not isinstance(value, numbers.Integral)):
            raise ValueError(f"generate: {name} must be a whole number, got {value!r}")
    if batch_size < 1:
        raise ValueError(f"generate: --batch_size must be >= 1, got {batch_size}")
    for name, value in (("prompts", prompts), ("choices", choices), ("labels", labels),
                        ("stop", stop)):
        if isinstance(value, str):
            # A string is a sequence too: each of its characters became a prompt (a choice, a
            # label, a stop string) of its own, without a word.
            raise ValueError(f"generate: {name}={value[:60]!r} is a string; give a list of "
                             f"strings ({name}=[{value[:60]!r}])")
    template = template.replace("\\n", "\n")  # a template typed on a command line
    if "{text}" not in template:
        raise ValueError(f"generate: --template {template!r} has no {{text}}: every prompt would "
                         "be the same text")
    labels = [str(x).strip() for x in labels]
    if mode == "complete":
        if choices or labels:
            raise ValueError("generate: choices and labels are for mode=score (--mode=score)")
        max_new_tokens = 64 if max_new_tokens is None else max_new_tokens
        temperature = 0.0 if temperature is None else temperature
        top_k = 0 if top_k is None else top_k
        top_p = 1.0 if top_p is None else top_p
        seed = 0 if seed is None else seed
        stop_at_eos = True if stop_at_eos is None else stop_at_eos
        if max_new_tokens < 1:
            raise ValueError(f"generate: --max_new_tokens must be >= 1, got {max_new_tokens}")
        problem = Sampling.problem(temperature, top_k, top_p)
        if problem:  # named as the command's flag, not as the dataclass's field
            raise ValueError(f"generate: --{problem[0]} {problem[1]}")
        sampling = Sampling(temperature, top_k, top_p)
        if any(not text for text in stop):
            raise ValueError("generate: an empty stop string would end every completion at once")
    else:
        # Scoring writes no completion: these were silently ignored, as if they had shaped it.
        given = [f"--{name}" for name, value in (
            ("max_new_tokens", max_new_tokens), ("temperature", temperature), ("top_k", top_k),
            ("top_p", top_p), ("seed", seed)) if value is not None] + (
            [] if stop_at_eos is None else ["--no_stop_at_eos"]) + (["--stop"] if stop else [])
        if given:
            raise ValueError(f"generate: {', '.join(given)} {'is' if len(given) == 1 else 'are'} "
                             "for --mode=complete; --mode=score writes no completion")
        if not choices:
            raise ValueError("generate: mode=score needs choices (--choice, repeatable)")
        labels = labels or [c.strip() for c in choices]
        if len(labels) != len(choices):
            raise ValueError(f"generate: {len(labels)} labels for {len(choices)} choices")
        if len(set(labels)) != len(labels):
            raise ValueError(f"generate: labels {labels} repeat a label")
    if output:  # not the prompt file, nor a file of the model's folder (its config.json)
        from tl_jax import predict
        predict.check_output(output, paths.expand(prompt_file) if prompt_file else "",
                             model_dir, command="generate")

    # -- prompts ---------------------------------------------------------------------------------
    records = [{"text": p} for p in prompts]
    if prompt_file:
        from tl_jax.data.readers import DataFormatError
        path = paths.expand(prompt_file)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"generate: prompt_file {prompt_file!r} does not exist"
                                    if not os.path.exists(path) else
                                    f"generate: prompt_file {prompt_file!r} is not a file")
        suffix = os.path.splitext(prompt_file)[1].lower()  # as the readers: .JSONL too
        if suffix == ".json":
            # A JSON document (an array of prompts, say) was read as plain-text lines: its
            # brackets, quotes and commas became prompts of their own, without a word.
            raise DataFormatError(prompt_file, None, "a .json prompt file is not read: prompt "
                                  "files are plain text (one prompt per line), .jsonl (one "
                                  f"JSON object per line, the prompt in its {text_field!r} "
                                  "field) or .csv/.tsv (a header row; the prompt in column "
                                  f"{text_field!r}); write the prompts as .jsonl")
        if suffix in (".jsonl", ".csv", ".tsv"):
            records += _prompt_rows(prompt_file, path, suffix, text_field, label_field)
        else:
            with open(path, "rb") as f:
                for lineno, raw in enumerate(f, 1):
                    try:
                        line = raw.decode("utf-8")
                    except UnicodeDecodeError as e:
                        raise DataFormatError(prompt_file, lineno,
                                              f"not UTF-8 (byte {e.start} of the line)") from None
                    if lineno == 1:
                        line = line.removeprefix("\ufeff")  # a UTF-8 byte-order mark
                    if line.strip():
                        records.append({"text": line.rstrip("\r\n")})
    if not records:
        if prompt_file:  # not "give --prompt_file": it was given, and is empty
            raise ValueError(f"generate: prompt_file {prompt_file!r} holds no prompts ("
                             + ("no rows under its header" if suffix in (".csv", ".tsv") else
                                "no rows" if suffix == ".jsonl" else
                                "it is empty or all its lines are blank") + ")")
        raise ValueError("generate: no prompts (give --prompt or --prompt_file)")
    if mode == "score" and prompt_file and label_field != "label" and not any(
            r.get("has_label_field") for r in records):
        # A --label_field the user named, in no row: accuracy was skipped without a word
        # (the default "label" stays silent, for an unlabelled prompt file).
        print(f"[generate] note: {prompt_file} has no field {label_field!r}"
              + ("" if suffix in (".jsonl", ".csv", ".tsv") else
                 " (a plain-text prompt file has no fields)")
              + ", so no accuracy is computed", file=sys.stderr, flush=True)
    if mode == "score":
        unknown = sorted({r["label"] for r in records if r.get("label") is not None}
                         - set(labels))
        if unknown:
            raise ValueError(f"generate: labels {unknown} in {prompt_file} are not among the "
                             f"labels of the choices {labels}; name them with --labels")

    model, params, tokenizer = load_model(model_dir)
    texts = [template.replace("{text}", r["text"]) for r in records]
    encoded = [tokenizer.encode(t) or [tokenizer.eos_id] for t in texts]
    results = []
    sink = None  # the `output` file, opened at the first result

    def keep(result):
        """Adds `result`, writing it to `output` at once: an interrupted run (Ctrl-C, an error
        in a later batch) keeps the results printed so far, which were written only once every
        prompt was done."""
        nonlocal sink
        results.append(result)
        if output:
            if sink is None:
                os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
                sink = open(output, "w", encoding="utf-8")
            sink.write(json.dumps(result, ensure_ascii=False) + "\n")
            sink.flush()

    if mode == "complete":
        if max_new_tokens > model.config.max_len:
            # A prompt of one token and max_len new tokens fit: the last is not fed back.
            raise ValueError(
                f"generate: max_new_tokens={max_new_tokens} leaves no room for a prompt in the "
                f"model's max_len {model.config.max_len} (at most {model.config.max_len} new "
                "tokens after a prompt of one)")
        stop_strings = [text.replace("\\n", "\n") for text in stop]
        stops = ([tokenizer.eos_id] if stop_at_eos else []) + stop_token_ids(tokenizer,
                                                                             stop_strings)
        # A stop string the model writes across several tokens is in no stop token: the host
        # checks the rows' text every few tokens instead, so they end early all the same.
        stop_when = stop_string_check(tokenizer, stop_strings) if stop_strings else None
        limit = model.config.max_len + 1 - max_new_tokens
        cut = [max(0, len(ids) - limit) for ids in encoded]
        if any(cut):
            print(f"[generate] warning: {sum(c > 0 for c in cut)} prompt(s) longer than the "
                  f"{limit} tokens that max_len {model.config.max_len} leaves beside "
                  f"max_new_tokens {max_new_tokens}; only their last {limit} tokens are read "
                  f"(the longest was {max(map(len, encoded))})", file=sys.stderr, flush=True)
        encoded = [ids[-limit:] for ids in encoded]  # keep the end of over-long prompts
        generator = Generator(model, params, pad_id=tokenizer.eos_id,
                              num_tokens=tokenizer.vocab_size)
        for start in range(0, len(encoded), batch_size):
            chunk = encoded[start:start + batch_size]
            # Each prompt draws from `seed` and its index among all the prompts: the same
            # completions whatever --batch_size (and seed 1 does not repeat seed 0's later ones).
            outs = generator.generate(chunk, max_new_tokens, sampling, stops, seed=seed,
                                      stop_when=stop_when,
                                      row_ids=range(start, start + len(chunk)))
            for k, (text, out) in enumerate(zip(texts[start:start + batch_size], outs)):
                if stop_at_eos and tokenizer.eos_id in out:
                    out = out[:out.index(tokenizer.eos_id)]
                completion = cut_at_stop(tokenizer.decode(out), stop_strings)
                result = {"prompt": text, "completion": completion}
                if cut[start + k]:
                    result["prompt_tokens_cut"] = cut[start + k]
                keep(result)
                print(f"{text}{completion}\n{'-' * 40}", flush=True)
    else:
        conts = [tokenizer.encode(c) for c in choices]
        for c, ids in zip(choices, conts):
            if not ids:
                raise ValueError(f"generate: choice {c!r} encodes to no tokens")
            if len(ids) > model.config.max_len:
                # Named here as the flag: `score` only knew it as "continuation 0" (of the
                # first prompt's), with no word of which --choice it was.
                raise ValueError(
                    f"generate: --choice {c[:60]!r}{'...' if len(c) > 60 else ''} is "
                    f"{len(ids)} tokens; the model's max_len {model.config.max_len} allows at "
                    f"most {model.config.max_len} after a context token")
        room = model.config.max_len + 1 - max(map(len, conts))
        long = sum(len(ids) > room for ids in encoded)
        if long:
            print(f"[generate] warning: {long} prompt(s) longer than the {room} tokens that "
                  f"max_len {model.config.max_len} leaves beside the longest choice; only their "
                  "last tokens are read", file=sys.stderr, flush=True)
        # Every prompt is scored before any is printed: a bar meanwhile (on a terminal).
        # Over the tokenizer's vocabulary, as a completion samples from it (not the padding
        # rows of a model whose embedding has more).
        predictions, scores = classify_zero_shot(model, params, encoded, conts,
                                                 batch_size=batch_size, progress=None,
                                                 num_tokens=tokenizer.vocab_size)
        correct = 0
        for r, text, pred, row in zip(records, texts, predictions, scores):
            result = {"prompt": text, "prediction": labels[int(pred)],
                      "scores": {c: float(s) for c, s in zip(choices, row)}}
            if r.get("label") is not None:
                result["label"] = r["label"]
                correct += r["label"] == labels[int(pred)]
            keep(result)
            print(json.dumps(result, ensure_ascii=False), flush=True)
        labelled = sum(r.get("label") is not None for r in records)
        if labelled:
            print(f"zero-shot accuracy {correct / labelled:.4f} on {labelled} labelled prompts",
                  flush=True)
    if sink is not None:
        sink.close()
    return results
