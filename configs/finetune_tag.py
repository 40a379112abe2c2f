"""Fine-tune a BERT encoder for BIO token classification (default: the silver `names` task).

Run:
  tl_jax train --config=configs/finetune_tag.py:minilm --workdir=/tmp/ft_names

The first run builds the silver tasks from $TL_JAX_DATA_DIR into $TL_JAX_TASKS_DIR (default
~/.cache/tl_jax/tasks; see tl_jax/data/task_builders.py). It fine-tunes `init_from` (default: the
imported all-MiniLM-L6-v2), evaluates entity-level span F1 (conlleval semantics) on the dev split
after every epoch, keeps the best checkpoint by it, writes WORKDIR/predictions/eval_step_N.conll,
and ends with a summary like:
  done: 62 steps | held-out span_f1 0.7xxx | held-out span_precision 0.7xxx | ...

Arguments: minilm (default), scratch (MiniLM's architecture and tokenizer, random weights), tiny
(a 2-layer model from scratch on a small slice: a smoke test). Any CoNLL file:
`--config.data.train_file=train.conll --config.data.eval_file=dev.conll`, or
`tfds:conll2003:train`.
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
    c.task = "tag"
    c.seed = 0
    c.init_from = MINILM if arg == "minilm" else ""  # tl_jax workdir or HF BERT dir; "" = scratch

    c.model = ml_collections.ConfigDict(dict(
        size="tiny",              # from scratch: a size name or a HF dir to copy the shape of
        num_layers=0,             # > 0: keep only the bottom num_layers, of init_from or of
                                  # the model from scratch (model.size); 0: all of them
        max_position_embeddings=512,
        dropout_rate=0.1,
        attention_dropout_rate=0.1,
        dtype="float32",
        classifier_dropout=0.1,
    ))

    c.data = ml_collections.ConfigDict(dict(
        train_file="silver:names:train",   # CoNLL file, tfds:conll2003:train, or silver:names:SPLIT
        eval_file="silver:names:dev",
        labels=(),                # () = O plus B-/I- of every type in the training data
        tokenizer="",             # "" = init_from's tokenizer (or trained on the data if none)
        tokenizer_vocab_size=8192,
        max_seq_length=64,
        batch_size=32,
        num_epochs=1.0,           # used when train.steps=0; eval/checkpoint every epoch
        max_train_examples=2000,  # 0 = all (20,000 silver sentences)
        max_eval_examples=500,
    ))

    c.optimizer = optimizers.default_config()
    c.optimizer.learning_rate = 1e-4 if arg == "minilm" else 3e-4
    c.optimizer.warmup_steps = 10

    c.train = ml_collections.ConfigDict(dict(
        steps=0, log_every=10, eval_every=0, eval_batches=0, checkpoint_every=0,
        keep_checkpoints=1, best_metric="eval/span_f1", best_mode="max", async_checkpoint=False,
        on_nonfinite="stop", peak_flops=200e9, progress=True,
    ))
    if arg == "scratch":
        c.data.tokenizer = MINILM
        c.model.size = MINILM  # its architecture, not its weights
    if arg == "tiny":
        c.data.max_train_examples = 256
        c.data.max_eval_examples = 64
        c.data.max_seq_length = 48
        c.data.batch_size = 16
        c.data.tokenizer_vocab_size = 2000
        c.optimizer.learning_rate = 1e-3
        c.optimizer.warmup_steps = 2
        c.train.log_every = 4

    c.mesh = parallel.default_config()
    c.distributed = parallel.distributed_config()
    return c
