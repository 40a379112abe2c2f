"""BERT pretraining (masked LM + next-sentence prediction) on raw text.

Run (`tl_jax quickstart` runs it shortened to 300 steps, then fine-tunes):
  tl_jax train --config=configs/bert_pretrain.py:mini --workdir=/tmp/bert_mini

It trains a WordPiece vocabulary on the corpus, pretrains for `train.steps` steps with a progress
bar, and ends with a summary like:
  done: 600 steps | held-out mlm_accuracy 0.2xxx | held-out nsp_accuracy 0.6xxx | 9,xxx tokens/s | MFU xx.x%

The argument picks a model size from `tl_jax.models.bert.SIZES` (tiny, mini, small, medium, base,
large); `tiny` also shrinks the run to a smoke test. Override anything with
`--config.key=value`, e.g. `--config.data.corpus='my/*.txt' --config.optimizer.name=lamb`.
"""
import ml_collections

from tl_jax import parallel
from tl_jax.optim import optimizers

# Steps / batch / warmup / peak lr per size, sized for a 2-core CPU at the small end.
RUNS = {
    "tiny": dict(steps=20, batch_size=16, warmup=5, lr=1e-3, seq=64),
    "mini": dict(steps=600, batch_size=32, warmup=60, lr=1e-3, seq=128),
    "small": dict(steps=10_000, batch_size=64, warmup=1_000, lr=5e-4, seq=128),
    "medium": dict(steps=100_000, batch_size=128, warmup=5_000, lr=3e-4, seq=128),
    "base": dict(steps=1_000_000, batch_size=256, warmup=10_000, lr=1e-4, seq=128),
    "large": dict(steps=1_000_000, batch_size=256, warmup=10_000, lr=1e-4, seq=128),
}


def get_config(arg=None):
    size = arg or "mini"
    if size not in RUNS:
        raise ValueError(f"Unknown size {size!r}; choose one of {sorted(RUNS)}")
    run = RUNS[size]
    c = ml_collections.ConfigDict()
    c.task = "bert_pretrain"
    c.seed = 0
    c.init_from = ""  # tl_jax workdir or Hugging Face BERT directory to start from

    c.model = ml_collections.ConfigDict(dict(
        size=size,                # or a HF BERT dir / tl_jax workdir: copy its architecture
        vocab_size=0,             # 0 = the tokenizer's size; otherwise must be >= it
        embedding_size=0,         # > 0: factorised embeddings this wide, projected to the
                                  # hidden size (ALBERT, ELECTRA-Small); 0 = hidden size
        max_position_embeddings=512,
        type_vocab_size=2,
        dropout_rate=0.1,
        attention_dropout_rate=0.1,
        dtype="float32",          # compute dtype; "bfloat16" = mixed precision (params stay f32)
    ))

    c.data = ml_collections.ConfigDict(dict(
        corpus="gensim:enwiki,gensim:lee",  # files, globs, jsonl, tfds:NAME, gensim:enwiki|lee;
        # or a folder `tl_jax tokenize` wrote with a WordPiece vocabulary (which comes with it)
        text_field="text",
        group_field="",
        tokenizer="",                       # "" = init_from's, else train WordPiece; or
                                            # vocab.txt / tokenizer.json
        tokenizer_vocab_size=8192,
        lowercase=True,
        max_seq_length=run["seq"],
        max_predictions_per_seq=20,
        masked_lm_prob=0.15,
        mask_token_prob=0.8,                # of the picked tokens: the share shown as [MASK],
        random_token_prob=0.1,              # as a random token; the rest unchanged
        short_seq_prob=0.1,
        whole_word_masking=False,
        dynamic_masking=True,
        dupe_factor=10,                     # static masking only: copies of the data, each
                                            # with its own pairs and masks (BERT: 10)
        eval_fraction=0.05,
        batch_size=run["batch_size"],       # global, over all devices and processes
        eval_batch_size=run["batch_size"],
        max_documents=0,
    ))

    c.optimizer = optimizers.default_config()
    c.optimizer.learning_rate = run["lr"]
    c.optimizer.warmup_steps = run["warmup"]

    c.train = ml_collections.ConfigDict(dict(
        steps=run["steps"],
        log_every=10,
        eval_every=200,
        eval_batches=20,          # 0 = the whole held-out set
        checkpoint_every=200,
        keep_checkpoints=3,
        best_metric="eval/mlm_accuracy",
        best_mode="max",
        async_checkpoint=True,
        on_nonfinite="stop",      # stop | skip (skipped steps leave params and optimizer as is)
        peak_flops=200e9,         # per device, for MFU; measure yours with benchmarks/
        progress=True,
    ))
    if size == "tiny":
        c.train.log_every = 5
        c.train.eval_every = 10
        c.train.checkpoint_every = 10
        c.train.eval_batches = 2
        c.data.max_documents = 200
        c.data.tokenizer_vocab_size = 2000

    c.mesh = parallel.default_config()
    c.distributed = parallel.distributed_config()
    return c
