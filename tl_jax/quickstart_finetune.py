"""The quickstart's second stage: fine-tune the freshly pretrained BERT and the same model from
scratch on a real labelled task, and report both scores.

    scores = quickstart_finetune.run(pretrain_workdir, workdir)

The task is the food reviews (`great` vs `other`) when `TL_JAX_DATA_DIR` points at the shared data,
else the 200 movie-review sentences gensim ships (`pang_lee_polarity.cor`, zero setup). Both arms
share the pretrained run's tokenizer, data, schedule and seed (see
`tl_jax.tasks.classify.transfer_comparison`); only the initial encoder weights differ. Sized to
take a minute or two on a 2-core CPU with BERT-mini.
"""
from __future__ import annotations

import os

from tl_jax.tasks import classify

FOOD = ["data.max_train_examples=384", "data.max_eval_examples=300", "data.max_seq_length=64",
        "data.num_epochs=2.0"]
POLARITY = ["data.max_seq_length=48", "data.num_epochs=3.0"]
COMMON = ["data.batch_size=32", "optimizer.learning_rate=2e-4", "optimizer.warmup_steps=4",
          "model.pooling=pooler", "data.tokenizer_vocab_size=8192"]


def run(pretrain_workdir: str, workdir: str, overrides=()) -> dict:
    """Fine-tunes both arms; prints and returns `{"task", "pretrained", "scratch"}` accuracies."""
    food = bool(os.environ.get("TL_JAX_DATA_DIR"))
    task = "food reviews (great vs other)" if food else "gensim polarity sentences (pos vs neg)"
    results = classify.transfer_comparison(
        pretrain_workdir, workdir, seeds=(0,),
        overrides=[*(FOOD if food else POLARITY), *COMMON, *overrides])
    scores = {"task": task, "pretrained": results["pretrained"][0]["eval/accuracy"],
              "scratch": results["scratch"][0]["eval/accuracy"]}
    print(f"== Fine-tuned on {task}: pretrained accuracy {scores['pretrained']:.3f} | "
          f"from scratch {scores['scratch']:.3f}", flush=True)
    return scores
