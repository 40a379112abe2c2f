"""Fine-tune a BERT encoder for sentence(-pair) classification (default: the food reviews).

Run:
  tl_jax train --config=configs/finetune_classify.py:minilm --workdir=/tmp/ft_food

It loads `init_from` (default: the imported all-MiniLM-L6-v2 in $TL_JAX_DATA_DIR), fine-tunes on
`data.train_file`, evaluates on `data.eval_file` after every epoch (keeping the best checkpoint by
accuracy and writing WORKDIR/predictions/eval_step_N.jsonl), and ends with a summary like:
  done: 250 steps | held-out accuracy 0.8xxx | held-out f1_macro 0.8xxx | held-out mcc 0.6xxx | ...

Arguments:
  minilm   all-MiniLM-L6-v2 from $TL_JAX_DATA_DIR/models (the default).
  scratch  the same architecture from random weights (MiniLM's tokenizer): the no-transfer baseline.
  tiny     a 2-layer model from scratch on a 192-example slice; a smoke test of a few steps.
Fine-tune your own pretraining run with `--config.init_from=/path/to/pretrain_workdir`; any other
file with `--config.data.train_file=... --config.data.eval_file=...` (jsonl, .csv, .tsv,
`tfds:glue/sst2:train`, `gensim:polarity:train`, `gensim:newsgroups:train`).
"""
import os

import ml_collections

from tl_jax import parallel
from tl_jax.optim import optimizers

DATA_DIR = os.environ.get("TL_JAX_DATA_DIR", "")
# Unset, the path stays unexpanded, so `:minilm` / `:scratch` fail naming the variable instead of
# quietly training a model from scratch.
MINILM = os.path.join(DATA_DIR or "$TL_JAX_DATA_DIR", "models", "all-MiniLM-L6-v2")


def get_config(arg=None):
    arg = arg or "minilm"
    if arg not in ("minilm", "scratch", "tiny"):
        raise ValueError(f"Unknown argument {arg!r}; choose minilm, scratch or tiny")
    c = ml_collections.ConfigDict()
    c.task = "classify"
    c.seed = 0
    # tl_jax pretraining workdir, or Hugging Face BERT directory; "" = from scratch.
    c.init_from = MINILM if arg == "minilm" else ""

    c.model = ml_collections.ConfigDict(dict(
        size="tiny",              # from scratch: a size name or a HF dir to copy the shape of;
                                  # ignored with init_from (the source dictates its shape)
        num_layers=0,             # > 0: keep only the bottom num_layers, of init_from or of
                                  # the model from scratch (model.size); 0: all of them
        max_position_embeddings=512,
        dropout_rate=0.1,
        attention_dropout_rate=0.1,
        dtype="float32",
        pooling="mean",           # mean | pooler | cls; MiniLM was trained with mean pooling
        classifier_dropout=0.1,
    ))

    c.data = ml_collections.ConfigDict(dict(
        train_file=os.path.join(DATA_DIR, "food_reviews_train.jsonl") if DATA_DIR
        else "gensim:newsgroups:train",  # zero-setup: 160 posts, alt.atheism vs sci.space
        eval_file=os.path.join(DATA_DIR, "food_reviews_test.jsonl") if DATA_DIR
        else "gensim:newsgroups:test",
        text_field="text",
        text_b_field="",          # set for sentence pairs
        label_field="label",
        labels=(),                # () = sorted training labels
        positive_label="",        # for binary F1, e.g. "great"
        tokenizer="",             # "" = init_from's tokenizer (or trained on the data if none)
        tokenizer_vocab_size=8192,
        max_seq_length=128,
        batch_size=32,            # global, over all devices and processes
        num_epochs=2.0,           # used when train.steps=0; eval/checkpoint every epoch
        max_train_examples=0,     # 0 = all
        max_eval_examples=0,
    ))

    c.optimizer = optimizers.default_config()
    c.optimizer.learning_rate = 5e-5 if arg == "minilm" else 2e-4
    c.optimizer.warmup_steps = 20

    c.train = ml_collections.ConfigDict(dict(
        steps=0,                  # 0 = data.num_epochs epochs
        log_every=10,
        eval_every=0,             # 0 = once per epoch
        eval_batches=0,           # 0 = the whole eval set (needed for exact metrics)
        checkpoint_every=0,       # 0 = once per epoch
        keep_checkpoints=1,
        best_metric="eval/accuracy",
        best_mode="max",
        async_checkpoint=False,
        on_nonfinite="stop",
        peak_flops=200e9,
        progress=True,
    ))
    if arg == "scratch":
        c.data.tokenizer = MINILM  # same vocabulary as the pretrained run: only weights differ
        c.model.size = MINILM  # its architecture, not its weights
    if arg == "tiny":
        c.data.max_train_examples = 192
        c.data.max_eval_examples = 64
        c.data.max_seq_length = 64
        c.data.batch_size = 16
        c.data.num_epochs = 1.0
        c.data.tokenizer_vocab_size = 1000
        c.optimizer.warmup_steps = 2
        c.train.log_every = 4

    c.mesh = parallel.default_config()
    c.distributed = parallel.distributed_config()
    return c
