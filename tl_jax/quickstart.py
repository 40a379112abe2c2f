"""The quickstart: pretrain a small BERT on text that ships with gensim, then fine-tune it.

    tl_jax quickstart --workdir=workdirs/quickstart

Stage 1 pretrains `configs/bert_pretrain.py:mini` (shortened to a few minutes on a 2-core CPU)
on the Wikipedia and Lee corpora that the gensim package ships: nothing to download. Stage 2
fine-tunes the pretrained encoder, and an identical encoder from scratch, on a real labelled
task (gensim's newsgroup posts, atheism vs space) and prints both held-out accuracies
next to the majority-class baseline.

Run again, each stage resumes its checkpoints (a finished one is only evaluated). Stage 2 is not
continued from another stage 1 than it started from (after more `--config.train.steps`, say):
that is an error saying to move WORKDIR/finetune aside.
"""
from __future__ import annotations

import json
import os
import pathlib

from tl_jax import config as config_lib
from tl_jax import train

ROOT = pathlib.Path(__file__).resolve().parent.parent
CONFIG = str(ROOT / "configs" / "bert_pretrain.py") + ":mini"

# A few minutes on 2 cores: short sequences and a few hundred steps.
QUICK_OVERRIDES = [
    "train.steps=300",
    "train.eval_every=100",
    "train.checkpoint_every=100",
    "train.eval_batches=10",
    "data.max_seq_length=64",
    "data.max_predictions_per_seq=10",
    "data.batch_size=32",
    "data.eval_batch_size=32",
    "optimizer.warmup_steps=30",
]


def pretrain_config(overrides=()):
    return config_lib.load_config(CONFIG, list(QUICK_OVERRIDES) + list(overrides))


def run(workdir: str, overrides=(), with_finetune: bool = True) -> dict:
    """Runs both stages; returns `{"pretrain": summary, "finetune": scores}`."""
    pretrain_dir = os.path.join(workdir, "pretrain")
    print(f"== Stage 1: pretraining BERT-mini on gensim's Wikipedia + Lee text -> {pretrain_dir}")
    result = train.train_and_evaluate(pretrain_config(overrides), pretrain_dir)
    # Stage 2 fine-tunes stage 1's final encoder, not a SIGTERM's; and without stage 2 a stopped
    # stage 1 is still not a finished quickstart (`tl_jax quickstart` exits 143 on this).
    result.check_finished("Stage 1 (pretraining)")
    out = {"pretrain": result.summary}
    if with_finetune:
        from tl_jax import quickstart_finetune
        finetune_dir = os.path.join(workdir, "finetune")
        check_finetune_source(finetune_dir, int(result.summary["step"]))
        print("== Stage 2: fine-tuning the pretrained model and the same model from scratch")
        out["finetune"] = quickstart_finetune.run(pretrain_dir, finetune_dir)
    return out


def check_finetune_source(finetune_dir: str, pretrain_step: int) -> None:
    """Stage 2's runs resume from their checkpoints, whatever stage 1 became since: after a rerun
    that pretrained further, they would report the old encoder's fine-tuning as this one's.
    Records the stage 1 step they start from, and refuses to continue them from another."""
    marker = os.path.join(finetune_dir, "pretrain_step.json")
    if os.path.exists(marker):
        with open(marker, encoding="utf-8") as f:
            used = json.load(f)["step"]
        if used != pretrain_step:
            raise ValueError(
                f"{finetune_dir} holds stage 2 runs fine-tuned from stage 1 at step {used}, but "
                f"stage 1 is now at step {pretrain_step}; they would resume rather than fine-tune "
                f"this encoder. Move {finetune_dir} aside (or use another --workdir) to fine-tune "
                "it again.")
        return
    os.makedirs(finetune_dir, exist_ok=True)
    with open(marker, "w", encoding="utf-8") as f:
        json.dump({"step": pretrain_step}, f)
