"""GPT causal-LM pretraining on raw text (default: the Austen novels in the shared data folder).

Run:
  tl_jax train --config=configs/gpt_pretrain.py:mini --workdir=/tmp/gpt_mini

It trains a byte-level BPE vocabulary on the corpus, pretrains for `train.steps` steps with a
progress bar, evaluates held-out perplexity (one book is held out; the perplexity is over the
first `train.eval_batches` batches of it, 20 here and 2 for `tiny`, so the start of the book:
`--config.train.eval_batches=0` scores all of it), and ends with a summary like:
  done: 1000 steps | held-out perplexity N | held-out accuracy 0.xxxx | N tokens/s | MFU x.x%
(measured: `:tiny` for 400 steps with data.tokenizer_vocab_size=2048 data.seq_len=128 reaches
held-out perplexity 139 in about a minute on a 2-core CPU.)

Then sample from it, or score label words zero-shot:
  tl_jax generate --model=/tmp/gpt_mini --prompt="It is a truth universally acknowledged"
  tl_jax generate --model=/tmp/gpt_mini --mode=score --prompt="She was" --choice=" happy" \
      --choice=" unhappy"

The argument picks a model size from `tl_jax.models.gpt.SIZES` (tiny, mini, small, medium);
`tiny` also shrinks the run to a smoke test. Override anything with `--config.key=value`, e.g.
`--config.data.corpus=gensim:enwiki` (zero-setup text shipped with gensim) or
`--config.init_from=path/to/gpt2` (a Hugging Face GPT-2 directory, or a tl_jax workdir; its
tokenizer is used unless `data.tokenizer` names another, so the ids match). A large corpus is
tokenised once with `tl_jax tokenize` and given as `--config.data.corpus=FOLDER` (README: "A
large corpus, tokenised once").
"""
import ml_collections

from tl_jax import parallel
from tl_jax.optim import optimizers

# Steps / batch / warmup / peak lr / sequence length per size, sized for a 2-core CPU at the
# small end.
RUNS = {
    "tiny": dict(steps=20, batch_size=16, warmup=5, lr=3e-3, seq=64),
    "mini": dict(steps=1000, batch_size=32, warmup=100, lr=1e-3, seq=128),
    "small": dict(steps=20_000, batch_size=64, warmup=1_000, lr=6e-4, seq=512),
    "medium": dict(steps=100_000, batch_size=128, warmup=2_000, lr=3e-4, seq=1024),
}


def get_config(arg=None):
    size = arg or "mini"
    if size not in RUNS:
        raise ValueError(f"Unknown size {size!r}; choose one of {sorted(RUNS)}")
    run = RUNS[size]
    c = ml_collections.ConfigDict()
    c.task = "clm"
    c.seed = 0
    c.init_from = ""  # tl_jax workdir or Hugging Face GPT-2 directory to start from

    c.model = ml_collections.ConfigDict(dict(
        size=size,
        vocab_size=0,             # 0 = the tokenizer's size; otherwise must be >= it
        max_len=0,                # 0 = the size table's position table length
        # 0 = the size table's; set them for a shape outside the table (e.g. an init_from
        # checkpoint such as distilgpt2: num_layers=6, the rest as small's).
        num_layers=0,
        embed_dim=0,
        num_heads=0,
        mlp_dim=0,                # 0 = 4 * embed_dim
        dropout_rate=0.1,
        attention_dropout_rate=0.1,
        dtype="float32",          # compute dtype; "bfloat16" = mixed precision (params stay f32)
    ))

    c.data = ml_collections.ConfigDict(dict(
        corpus="$TL_JAX_DATA_DIR/austen.jsonl",  # files, globs, jsonl, tfds:NAME, gensim:enwiki;
        # or a folder `tl_jax tokenize` wrote (its tokenizer comes with it; text_field and
        # group_field were applied when it was written)
        text_field="text",
        group_field="",           # "" = auto (book/title); consecutive equal values = a document
        tokenizer="",             # "" = init_from's, else train byte-level BPE; or a dir
        tokenizer_vocab_size=8192,
        seq_len=run["seq"],
        eval_fraction=0.1,        # documents held out for perplexity
        batch_size=run["batch_size"],       # global, over all devices and processes
        eval_batch_size=run["batch_size"],
        max_documents=0,
    ))

    c.optimizer = optimizers.default_config()
    c.optimizer.learning_rate = run["lr"]
    c.optimizer.warmup_steps = run["warmup"]
    c.optimizer.decay = "cosine"
    c.optimizer.b2 = 0.95
    c.optimizer.eps = 1e-8
    c.optimizer.weight_decay = 0.1

    c.train = ml_collections.ConfigDict(dict(
        steps=run["steps"],
        log_every=10,
        eval_every=250,
        eval_batches=20,          # 0 = the whole held-out set
        checkpoint_every=250,
        keep_checkpoints=3,
        best_metric="eval/perplexity",
        best_mode="min",
        async_checkpoint=True,
        on_nonfinite="stop",      # stop | skip
        peak_flops=200e9,         # per device, for MFU; measure yours with benchmarks/
        progress=True,
    ))
    if size == "tiny":
        c.train.log_every = 5
        c.train.eval_every = 10
        c.train.checkpoint_every = 10
        c.train.eval_batches = 2
        c.data.tokenizer_vocab_size = 1024
        c.data.eval_fraction = 0.2

    c.mesh = parallel.default_config()
    c.distributed = parallel.distributed_config()
    return c
