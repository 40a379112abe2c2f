"""ELMo-style biLM pretraining (char CNN + forward/backward LSTMs, shared softmax).

Run:
  tl_jax train --config=configs/elmo_pretrain.py:mini --workdir=/tmp/elmo_mini

It builds a word vocabulary from the corpus (default: Austen + the Wikipedia sample in
$TL_JAX_DATA_DIR), trains both directions for `train.steps` steps and ends with a summary like:
  done: 600 steps | held-out forward_perplexity NNN.N | held-out backward_perplexity NNN.N | ...

The argument picks a size from `tl_jax.models.elmo.SIZES` (tiny, mini, small, base); `tiny`
shrinks the run to a smoke test of a few steps. `--config.loss.sampled_softmax=N` trains with a
sampled softmax of N candidates (eval stays exact); mini, small and base do so by default (1024,
4096, 8192), and N=0 trains with the full softmax. Features for downstream tasks:
`tl_jax.elmo_features.load_elmo(workdir)`. A large corpus is worth splitting into words once
with `tl_jax tokenize --words` and given as `--config.data.corpus=FOLDER` (README: "A large
corpus, tokenised once"); text_field and group_field then apply when the folder is written.
"""
import ml_collections

from tl_jax import parallel
from tl_jax.optim import optimizers

RUNS = {
    "tiny": dict(steps=6, batch_size=8, warmup=2, lr=3e-3, seq=16, vocab=2000, sampled=0),
    "mini": dict(steps=600, batch_size=32, warmup=50, lr=2e-3, seq=32, vocab=20000, sampled=1024),
    "small": dict(steps=20_000, batch_size=64, warmup=500, lr=1e-3, seq=32, vocab=50000,
                  sampled=4096),
    "base": dict(steps=500_000, batch_size=128, warmup=2_000, lr=5e-4, seq=20, vocab=800000,
                 sampled=8192),
}


def get_config(arg=None):
    size = arg or "mini"
    if size not in RUNS:
        raise ValueError(f"Unknown size {size!r}; choose one of {sorted(RUNS)}")
    run = RUNS[size]
    c = ml_collections.ConfigDict()
    c.task = "bilm"
    c.seed = 0
    c.init_from = ""  # a tl_jax bilm workdir to continue from (its weights and its vocabulary)

    c.model = ml_collections.ConfigDict(dict(
        size=size,
        dropout_rate=0.1,
        max_chars=0,  # 0 = the size's default
        # Initial forget-gate and highway carry-gate biases. bilm-tf and AllenNLP start both at
        # 1 (set both to 1.0 to reproduce them); 0 is what the README's perplexities used.
        forget_bias_init=0.0,
        highway_gate_bias_init=0.0,
    ))
    c.data = ml_collections.ConfigDict(dict(
        corpus="$TL_JAX_DATA_DIR/austen.jsonl,$TL_JAX_DATA_DIR/enwiki_sample.jsonl",
        text_field="text",
        group_field="",
        max_len=run["seq"],        # tokens per piece, <S> and </S> included
        min_count=2,
        max_vocab=run["vocab"],    # words in the softmax, specials included
        eval_fraction=0.02,
        max_units=0,               # 0 = every text unit of the corpus
        batch_size=run["batch_size"],
        eval_batch_size=run["batch_size"],
    ))
    c.loss = ml_collections.ConfigDict(dict(
        sampled_softmax=run["sampled"],  # candidates per batch; 0 = full softmax in training
    ))
    c.optimizer = optimizers.default_config()
    c.optimizer.learning_rate = run["lr"]
    c.optimizer.warmup_steps = run["warmup"]
    c.optimizer.weight_decay = 0.0
    c.optimizer.clip_norm = 1.0

    c.train = ml_collections.ConfigDict(dict(
        steps=run["steps"],
        log_every=20,
        eval_every=200,
        eval_batches=20,
        checkpoint_every=200,
        keep_checkpoints=2,
        best_metric="eval/forward_nll",
        best_mode="min",
        async_checkpoint=True,
        on_nonfinite="stop",
        peak_flops=200e9,
        progress=True,
    ))
    if size == "tiny":
        c.data.max_units = 400
        c.data.eval_fraction = 0.1
        c.train.log_every = 2
        c.train.eval_every = 3
        c.train.checkpoint_every = 3
        c.train.eval_batches = 2

    c.mesh = parallel.default_config()
    c.distributed = parallel.distributed_config()
    return c
