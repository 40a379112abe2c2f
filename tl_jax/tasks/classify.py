"""Sentence and sentence-pair classification (fine-tuning BERT with a classifier head).

Data: `config.data.train_file` / `eval_file` name a jsonl/CSV/TSV file, `tfds:glue/NAME:SPLIT` or
`gensim:polarity:train|test` (see `tl_jax.data.readers.read_records`). Labels are
`config.data.labels` or, when empty, the sorted set of training labels.

Metrics: in the step, `loss` and `accuracy` as (sum, count); after each eval pass, `evaluate`
computes accuracy, macro F1, MCC (and binary F1 of `data.positive_label`: NaN, with a note, when
no scored record has that label and none is predicted as it) on the whole eval set and writes
`WORKDIR/predictions/eval_step_N.jsonl` (text, gold, predicted, probabilities).
The best checkpoint is kept by `train.best_metric` (default `eval/accuracy`).
"""
from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
import numpy as np

from tl_jax.data import features, readers
from tl_jax.evaluation import classification
from tl_jax.models import heads
from tl_jax.tasks import downstream, note_undefined


def read_split(data_cfg, spec: str, limit: int) -> list[dict]:
    records = readers.read_records(spec, "classification", text_field=data_cfg.text_field,
                                   text_b_field=data_cfg.text_b_field or None,
                                   label_field=data_cfg.label_field)
    return records[:limit] if limit else records


class Task(downstream.EncoderTask):
    """The `classify` task (contract: `tl_jax/tasks/__init__.py`)."""

    progress_keys = ("accuracy",)
    summary_keys = ("eval/accuracy", "eval/f1_macro", "eval/mcc")

    def __init__(self, config, workdir):
        self.config, d = config, config.data
        downstream.check_data_sizes(d)
        self.train_records = read_split(d, d.train_file, d.max_train_examples)
        self.eval_records = read_split(d, d.eval_file, d.max_eval_examples)
        # As the files' labels: data.labels=0,1 arrives as numbers, the files give "0" and "1".
        labels = [readers.label_text(label) for label in d.labels] or sorted(
            {r["label"] for r in self.train_records})
        downstream.check_labels(labels, bool(d.labels), [
            (d.train_file, self.train_records), (d.eval_file, self.eval_records)])
        downstream.check_positive_label(d.positive_label, labels)
        if not d.labels:
            downstream.note_rare_labels(d.train_file, self.train_records, config.task)
        texts = [r["text"] for r in self.train_records] + [
            r["text_b"] for r in self.train_records if r["text_b"]]
        self._build(downstream.Encoder.from_config(config, texts, workdir), labels)
        cut_train, cut_eval = [], []
        self.train_arrays = self.encode(self.train_records, cut_train)
        self.eval_arrays = self.encode(self.eval_records, cut_eval)
        downstream.note_truncated(config, cut_train, len(self.train_records), "training")
        downstream.note_truncated(config, cut_eval, len(self.eval_records), "eval")
        downstream.fit_schedule(config, len(self.train_records))

    def _build(self, encoder, labels):
        """The model over `encoder` with one output per label (training and `for_prediction`)."""
        self.labels, self.encoder = list(labels), encoder
        self.label_map = {label: i for i, label in enumerate(self.labels)}
        self.model_config = encoder.model_config
        self.model = heads.BertForSequenceClassification(
            self.model_config, len(self.labels), pooling=self.config.model.pooling,
            classifier_dropout=self.config.model.classifier_dropout)
        seq = self.config.data.max_seq_length
        self.flops_per_example = downstream.encoder_flops(self.model_config, seq)
        self.tokens_per_example = seq

    def encode(self, records, truncated=None):
        return features.encode_classification(self.encoder.tokenizer, records, self.label_map,
                                              self.config.data.max_seq_length, truncated)

    # -- data -------------------------------------------------------------------------------

    def example_batch(self, batch_size):
        seq = self.config.data.max_seq_length
        return dict(input_ids=np.zeros((batch_size, seq), np.int32),
                    segment_ids=np.zeros((batch_size, seq), np.int32),
                    input_mask=np.ones((batch_size, seq), np.int32),
                    labels=np.zeros((batch_size,), np.int32))

    def save(self, workdir):
        downstream.write_labels(workdir, self.labels)  # first: it may refuse the workdir
        self.encoder.save(workdir)

    # -- model ------------------------------------------------------------------------------

    def _logits(self, params, batch, rng, train):
        outputs = self._head_outputs(params, batch, rng, train)
        return outputs["logits"]  # (B, C)

    def loss_fn(self, params, batch, rng, train):
        logits = self._logits(params, batch, rng, train)
        # Rows padding an eval batch have no tokens and must not count. Training rows are all
        # real ([CLS] at least), so every micro-batch of an accumulated step counts the same
        # rows and the mean of their means is the batch's: no `loss_normalizers` needed.
        weights = (batch["input_mask"].sum(-1) > 0).astype(jnp.float32)  # (B,)
        ce_sum, n = downstream.weighted_cross_entropy(logits, batch["labels"], weights)
        correct = ((jnp.argmax(logits, -1) == batch["labels"]) * weights).sum()
        return ce_sum / jnp.maximum(n, 1.0), dict(loss=(ce_sum, n), accuracy=(correct, n))

    def predict_fn(self, params, batch):
        logits = self._logits(params, batch, jax.random.PRNGKey(0), False)
        return dict(probs=jax.nn.softmax(logits, -1), row=batch["row"])

    # -- decoding, scoring and writing the eval set's predictions (eval and `tl_jax predict`) --

    def decode(self, batches_and_outputs) -> dict:
        """`{"rows", "probs", "predicted"}` of the eval records the outputs cover, in order."""
        rows, probs = [], []
        for _, out in batches_and_outputs:
            keep = out["row"] >= 0
            rows.append(out["row"][keep])
            probs.append(out["probs"][keep])
        rows, probs = np.concatenate(rows), np.concatenate(probs)
        return dict(rows=rows, probs=probs, predicted=[self.labels[i] for i in probs.argmax(-1)])

    def score(self, predictions) -> dict[str, float]:
        gold = [self.eval_records[r]["label"] for r in predictions["rows"]]
        positive = self.config.data.positive_label or None
        report = classification.classification_report(gold, predictions["predicted"],
                                                      positive=positive)
        if math.isnan(report.get("f1", 0.0)):
            note_undefined(self, ["eval/f1"], f"none of the {len(gold)} scored records has the "
                           f"label data.positive_label={positive!r} and none was predicted as it")
        return report

    @staticmethod
    def eval_metric_names(config) -> tuple[str, ...]:
        """What an eval reports (as eval/NAME), from the config alone
        (`tl_jax.tasks.eval_metric_names`): `loss_fn`'s loss and accuracy, and `score`'s
        report: accuracy, f1_macro and mcc, and f1 (binary) with data.positive_label. The
        `probe` and `lm_classify` tasks report the same."""
        names = ("loss", "accuracy", "f1_macro", "mcc")
        return names + ("f1",) if config.data.positive_label else names

    def write_predictions(self, path, predictions) -> None:
        """jsonl: text, gold (None when unlabelled), predicted and probabilities per record."""
        records = self.eval_records
        downstream.write_jsonl(path, (
            {"row": int(r), "text": records[r]["text"], "text_b": records[r]["text_b"],
             "gold": records[r]["label"], "predicted": p,
             "probs": {label: round(float(x), 5) for label, x in zip(self.labels, pr)}}
            for r, p, pr in zip(predictions["rows"], predictions["predicted"],
                                predictions["probs"])))


def transfer_comparison(pretrained: str, workdir: str, seeds=(0,), overrides=(),
                        config_spec: str = "configs/finetune_classify.py:minilm") -> dict:
    """Fine-tunes `pretrained` and the same architecture from random weights; returns both.

    The quickstart's second stage and the evidence-of-transfer experiment. Both runs share the
    tokenizer of `pretrained` (a tl_jax workdir or a HF directory), data, schedule and seed; only
    the initial encoder weights differ. Data defaults to the config's (the food reviews when
    TL_JAX_DATA_DIR is set, else gensim's 200 polarity sentences); override anything with
    `overrides`, e.g. `("data.max_train_examples=800",)`.

    Returns:
      `{"pretrained": [summary per seed], "scratch": [...], "pretrained_accuracy": (mean, std),
      "scratch_accuracy": (mean, std)}`; summaries hold `eval/accuracy`, `eval/f1_macro`, `eval/mcc`
      of the last epoch.
    """
    from tl_jax import config as config_lib, train  # train imports this module's package

    results = {"pretrained": [], "scratch": []}
    for seed in seeds:
        for arm in ("pretrained", "scratch"):
            arm_overrides = [f"seed={seed}", "train.progress=False", "train.keep_checkpoints=1"]
            if arm == "pretrained":
                arm_overrides.append(f"init_from={pretrained}")
            else:
                arm_overrides += ["init_from=", f"model.size={pretrained}",
                                  f"data.tokenizer={downstream.tokenizer_path(pretrained)}"]
            config = config_lib.load_config(config_spec, [*overrides, *arm_overrides])
            result = train.train_and_evaluate(config, os.path.join(workdir, f"{arm}_seed{seed}"))
            result.check_finished(f"The {arm} arm's seed {seed}")
            summary = result.summary
            results[arm].append({k: v for k, v in summary.items() if k.startswith("eval/")})
    for arm in ("pretrained", "scratch"):
        accuracies = [s["eval/accuracy"] for s in results[arm]]
        results[f"{arm}_accuracy"] = (float(np.mean(accuracies)), float(np.std(accuracies)))
    return results
