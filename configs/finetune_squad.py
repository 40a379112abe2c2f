"""Fine-tune a BERT encoder for extractive QA, SQuAD-style (default: the silver `cloze_qa` task).

Run:
  tl_jax train --config=configs/finetune_squad.py:minilm --workdir=/tmp/ft_cloze

The first run builds the silver tasks from $TL_JAX_DATA_DIR into $TL_JAX_TASKS_DIR (default
~/.cache/tl_jax/tasks; see tl_jax/data/task_builders.py). It fine-tunes `init_from` (default: the
imported all-MiniLM-L6-v2) on question + context windows (doc stride), decodes n-best spans with a
maximum answer length on the dev split after every epoch, scores them with the official SQuAD
EM/F1, keeps the best checkpoint by F1, writes WORKDIR/predictions/eval_step_N.json, and ends with
a summary like:
  done: 203 steps | held-out exact 3x.xxxx | held-out f1 4x.xxxx | ...

Arguments: minilm (default), scratch (MiniLM's architecture and tokenizer, random weights), tiny
(a 2-layer model from scratch on a small slice: a smoke test). Real SQuAD:
`--config.data.train_file=train-v1.1.json --config.data.eval_file=dev-v1.1.json` or
`tfds:squad/v1.1:train`; SQuAD 2.0 adds `--config.data.version=2.0`, which needs training data with
unanswerable questions: the silver `cloze_qa` is v1.1, so build its v2.0 variant with
`tl_jax build_tasks --out_dir=DIR --qa_version=2.0` and pass DIR/cloze_qa/{train,dev}.json.
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
    c.task = "squad"
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
    ))

    c.data = ml_collections.ConfigDict(dict(
        train_file="silver:cloze_qa:train",  # SQuAD JSON, tfds:squad/v1.1:train, silver:cloze_qa:SPLIT
        eval_file="silver:cloze_qa:dev",
        version="1.1",            # "2.0": unanswerable questions and the no-answer threshold
        tokenizer="",
        tokenizer_vocab_size=8192,
        max_seq_length=256,
        doc_stride=96,
        max_query_length=64,
        n_best=20,
        max_answer_length=30,     # sub-tokens
        null_threshold=0.0,       # v2.0: answer "" when null score - best span score > this
        skip_windows_without_answer=False,  # v1.1: True drops training windows that miss the
                                  # answer; False keeps them pointing at [CLS], as BERT does
        batch_size=16,
        num_epochs=1.0,
        max_train_examples=2000,  # questions; 0 = all
        max_eval_examples=300,
    ))

    c.optimizer = optimizers.default_config()
    c.optimizer.learning_rate = 1e-4 if arg == "minilm" else 3e-4
    c.optimizer.warmup_steps = 10

    c.train = ml_collections.ConfigDict(dict(
        steps=0, log_every=10, eval_every=0, eval_batches=0, checkpoint_every=0,
        keep_checkpoints=1, best_metric="eval/f1", best_mode="max", async_checkpoint=False,
        on_nonfinite="stop", peak_flops=200e9, progress=True,
    ))
    if arg == "scratch":
        c.data.tokenizer = MINILM
        c.model.size = MINILM  # its architecture, not its weights
    if arg == "tiny":
        c.data.max_train_examples = 256
        c.data.max_eval_examples = 48
        c.data.max_seq_length = 96
        c.data.doc_stride = 32
        c.data.max_query_length = 32
        c.data.batch_size = 16
        c.data.tokenizer_vocab_size = 2000
        c.optimizer.learning_rate = 1e-3
        c.optimizer.warmup_steps = 2
        c.train.log_every = 4

    c.mesh = parallel.default_config()
    c.distributed = parallel.distributed_config()
    return c
