"""DistilBERT-style distillation: a BERT teacher with an MLM head into a student of half its depth.

Run (the teacher is a tl_jax BERT pretraining workdir or a Hugging Face BERT with an MLM head):
  tl_jax train --config=configs/distill.py --config.init_from=runs/bert_mini --workdir=/tmp/distill

all-MiniLM-L6-v2 was published without its MLM head, so give it one first (continued
pretraining, a few hundred steps), then distil its 6 layers into 3:
  tl_jax train --config=configs/bert_pretrain.py:mini --workdir=runs/minilm_mlm \
    --config.model.size=$TL_JAX_DATA_DIR/models/all-MiniLM-L6-v2 \
    --config.init_from=$TL_JAX_DATA_DIR/models/all-MiniLM-L6-v2 \
    --config.data.tokenizer=$TL_JAX_DATA_DIR/models/all-MiniLM-L6-v2 \
    --config.data.corpus=$TL_JAX_DATA_DIR/enwiki_sample.jsonl --config.optimizer.learning_rate=1e-4
  tl_jax train --config=configs/distill.py:minilm --config.init_from=runs/minilm_mlm \
    --workdir=/tmp/distill_minilm

It copies the teacher's embeddings, heads and every other layer into the student, trains the
student on masked-LM batches in the teacher's vocabulary with the soft-target, MLM and cosine
losses, and ends with a summary like:
  done: 300 steps | held-out mlm_accuracy 0.xxxx | held-out teacher_mlm_accuracy 0.xxxx |
  held-out agreement 0.xxxx | held-out distill_loss x.xxxx | ... tokens/s | MFU x.x%
The student sits under bert/ like any pretraining run's encoder: fine-tune it with
`tl_jax train --config=configs/finetune_classify.py --config.init_from=/tmp/distill_minilm`.

Arguments:
  default  any teacher (`--config.init_from`), a 300-step run.
  minilm   MiniLM-sized run settings (6 -> 3 layers), on the shared Wikipedia text.
  tiny     a few steps on a slice of text: a smoke test (needs `--config.init_from`).
"""
import os

import ml_collections

from tl_jax import parallel
from tl_jax.optim import optimizers

DATA_DIR = os.environ.get("TL_JAX_DATA_DIR", "")

RUNS = {
    "default": dict(steps=300, batch_size=32, warmup=30, lr=5e-4, seq=128),
    "minilm": dict(steps=300, batch_size=16, warmup=30, lr=2e-4, seq=128),
    "tiny": dict(steps=6, batch_size=16, warmup=0, lr=1e-3, seq=32),
}


def get_config(arg=None):
    arg = arg or "default"
    if arg not in RUNS:
        raise ValueError(f"Unknown argument {arg!r}; choose one of {sorted(RUNS)}")
    run = RUNS[arg]
    c = ml_collections.ConfigDict()
    c.task = "distill"
    c.seed = 0
    # The teacher: a tl_jax BERT pretraining (or distillation) workdir, tl_jax weights, or a
    # Hugging Face BERT directory; it must have an MLM head. Required.
    c.init_from = ""

    c.model = ml_collections.ConfigDict(dict(  # the teacher fixes every shape
        dropout_rate=0.1,             # the student's; the teacher runs without dropout
        attention_dropout_rate=0.1,
        dtype="float32",              # compute dtype of both models
    ))

    c.student = ml_collections.ConfigDict(dict(
        num_layers=0,                 # 0 = half the teacher's layers (rounded up)
        layers="",                    # teacher layers to copy, e.g. "0,2,4"; "" = evenly spaced
                                      # from layer 0 (12 -> 0,2,...,10; DistilBERT's
                                      # extract_distilbert.py took "0,2,4,7,9,11")
        init="teacher",               # teacher | scratch | a BERT dir/workdir of the same width
    ))

    c.distill = ml_collections.ConfigDict(dict(  # DistilBERT's weights
        temperature=2.0,
        alpha_ce=5.0,                 # soft targets: T^2 * KL(teacher || student)
        alpha_mlm=2.0,                # the student's own masked-LM loss
        alpha_cos=1.0,                # 1 - cos(last hidden states) over real tokens
        # The KL at the masked positions only (the reference script's --restrict_ce_to_mask).
        # False: at every real token, as that script does by default (costs every position's
        # logits, batch x length x vocabulary, in both models).
        restrict_ce_to_mask=True,
        # True: the student's position embeddings stay the teacher's (the reference command's
        # --freeze_pos_embs); False trains them.
        freeze_position_embeddings=False,
    ))

    corpus = (os.path.join(DATA_DIR, "enwiki_sample.jsonl") if DATA_DIR and arg != "default"
              else "gensim:enwiki,gensim:lee")
    c.data = ml_collections.ConfigDict(dict(
        corpus=corpus,                # as configs/bert_pretrain.py
        text_field="text",
        group_field="",
        tokenizer="",                 # "" = the teacher's (any other must be the same vocabulary)
        tokenizer_vocab_size=0,       # unused: the vocabulary is the teacher's
        lowercase=True,
        max_seq_length=run["seq"],
        max_predictions_per_seq=20,
        masked_lm_prob=0.15,
        short_seq_prob=0.1,
        whole_word_masking=False,
        dynamic_masking=True,
        dupe_factor=10,               # static masking only (BERT: 10)
        eval_fraction=0.05,
        batch_size=run["batch_size"],
        eval_batch_size=run["batch_size"],
        max_documents=0,
    ))

    c.optimizer = optimizers.default_config()
    c.optimizer.learning_rate = run["lr"]
    c.optimizer.warmup_steps = run["warmup"]

    c.train = ml_collections.ConfigDict(dict(
        steps=run["steps"],
        log_every=10,
        eval_every=100,
        eval_batches=20,
        checkpoint_every=100,
        keep_checkpoints=2,
        best_metric="eval/agreement",
        best_mode="max",
        async_checkpoint=True,
        on_nonfinite="stop",
        peak_flops=200e9,
        progress=True,
    ))
    if arg == "tiny":
        c.data.max_documents = 60
        c.data.max_predictions_per_seq = 5
        c.train.log_every = 2
        c.train.eval_every = 3
        c.train.checkpoint_every = 3
        c.train.eval_batches = 2

    c.mesh = parallel.default_config()
    c.distributed = parallel.distributed_config()
    return c
