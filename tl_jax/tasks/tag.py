"""Token classification with BIO / IOB2 tags (NER-style), fine-tuning BERT with a per-token head.

Data: `config.data.train_file` / `eval_file` are CoNLL column files (e.g. the silver `names` task
from `tl_jax.data.task_builders`) or `tfds:conll2003:SPLIT`. Each word's tag goes on its first
sub-token; later sub-tokens, special tokens and padding are ignored by the loss (`IGNORE`).

Metrics: in the step, `loss` and sub-token `accuracy` over labelled positions; after each eval pass,
`evaluate` maps first-sub-token predictions back onto words and reports entity-level `span_f1`,
`span_precision` and `span_recall` (conlleval semantics; NaN, with a note, when the scored
sentences have no gold and no predicted entity), and writes
`WORKDIR/predictions/eval_step_N.conll` (`word gold predicted`, blank line between sentences,
readable by `conlleval`). Keep the best checkpoint by `eval/span_f1`.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from tl_jax import paths
from tl_jax.data import features, readers
from tl_jax.evaluation import spans
from tl_jax.models import heads
from tl_jax.tasks import downstream, normalized, note_undefined


def label_set(sentences) -> list[str]:
    """"O" first, then B-/I- tags of every type seen, so both exist for each type."""
    kinds = sorted({t[2:] for s in sentences for t in s["tags"] if t != "O"})
    return ["O"] + [f"{p}-{k}" for k in kinds for p in ("B", "I")]


class Task(downstream.EncoderTask):
    """The `tag` task (contract: `tl_jax/tasks/__init__.py`)."""

    progress_keys = ("accuracy",)
    summary_keys = ("eval/span_f1", "eval/span_precision", "eval/span_recall")

    def __init__(self, config, workdir):
        self.config, d = config, config.data
        downstream.check_data_sizes(d)

        def read(spec, limit):
            records = readers.read_records(spec, "tagging")
            return records[:limit] if limit else records

        self.train_records = read(d.train_file, d.max_train_examples)
        self.eval_records = read(d.eval_file, d.max_eval_examples)
        labels = list(d.labels) or label_set(self.train_records)
        downstream.check_labels(labels, bool(d.labels), [
            (d.train_file, self.train_records), (d.eval_file, self.eval_records)], kind="tags")
        texts = [" ".join(s["tokens"]) for s in self.train_records]
        self._build(downstream.Encoder.from_config(config, texts, workdir), labels)
        cut_train, cut_eval = [], []
        self.train_arrays = self.encode(self.train_records, cut_train, source=d.train_file)
        self.train_arrays.pop("word_index")  # only decoding needs it
        self.eval_arrays = self.encode(self.eval_records, cut_eval, source=d.eval_file)
        downstream.note_truncated(config, cut_train, len(self.train_records), "training",
                                  d.train_file, self.train_records)
        downstream.note_truncated(config, cut_eval, len(self.eval_records), "eval",
                                  d.eval_file, self.eval_records)
        downstream.fit_schedule(config, len(self.train_records))

    def _build(self, encoder, labels):
        """The model over `encoder` with one output per tag (training and `for_prediction`)."""
        self.labels, self.encoder = list(labels), encoder
        self.label_map = {t: i for i, t in enumerate(self.labels)}
        self.model_config = encoder.model_config
        self.model = heads.BertForTokenClassification(
            self.model_config, len(self.labels),
            classifier_dropout=self.config.model.classifier_dropout)
        seq = self.config.data.max_seq_length
        self.flops_per_example = downstream.encoder_flops(self.model_config, seq)
        self.tokens_per_example = seq

    def encode(self, records, truncated=None, source: str = ""):
        """`source` (the file) names where tagged words the tokenizer drops were found."""
        return features.encode_tagging(self.encoder.tokenizer, records, self.label_map,
                                       self.config.data.max_seq_length, truncated, source=source)

    # -- data -------------------------------------------------------------------------------

    def example_batch(self, batch_size):
        seq = self.config.data.max_seq_length
        zeros = lambda: np.zeros((batch_size, seq), np.int32)  # noqa: E731
        return dict(input_ids=zeros(), segment_ids=zeros(), input_mask=zeros() + 1, labels=zeros())

    def save(self, workdir):
        downstream.write_labels(workdir, self.labels)  # first: it may refuse the workdir
        self.encoder.save(workdir)

    # -- model ------------------------------------------------------------------------------

    def _logits(self, params, batch, rng, train):
        outputs = self._head_outputs(params, batch, rng, train)
        return outputs["logits"]  # (B, L, C)

    @staticmethod
    def _weights(batch):
        # Rows padding an eval batch have no tokens but labels 0, not IGNORE: they must not count.
        return ((batch["labels"] != features.IGNORE) & (batch["input_mask"] > 0)
                ).astype(jnp.float32)  # (B, L)

    def loss_normalizers(self, batch):
        """The labelled sub-words (one per word) the loss averages over: sentences have
        different numbers of words, so the micro-batches of one step have different counts."""
        return {"labelled": self._weights(batch).sum()}

    def loss_fn(self, params, batch, rng, train, normalizers=None):
        logits = self._logits(params, batch, rng, train)
        weights = self._weights(batch)
        ce_sum, n = downstream.weighted_cross_entropy(logits, batch["labels"], weights)
        correct = ((jnp.argmax(logits, -1) == batch["labels"]) * weights).sum()
        return (normalized(ce_sum, n, normalizers, "labelled"),
                dict(loss=(ce_sum, n), accuracy=(correct, n)))

    def predict_fn(self, params, batch):
        logits = self._logits(params, batch, jax.random.PRNGKey(0), False)
        return dict(predicted=jnp.argmax(logits, -1).astype(jnp.int32), row=batch["row"],
                    word_index=batch["word_index"])

    predictions_extension = ".conll"

    # -- decoding, scoring and writing the eval set's predictions (eval and `tl_jax predict`) --

    def decode(self, batches_and_outputs) -> dict:
        """`{"rows", "predicted"}`: word-level tags of the eval sentences the outputs cover."""
        rows, predicted = [], []
        for _, out in batches_and_outputs:
            for row, pred, word_index in zip(out["row"], out["predicted"], out["word_index"]):
                if row < 0:
                    continue
                rows.append(row)
                predicted.append(features.tags_from_predictions(
                    pred, word_index, len(self.eval_records[row]["tokens"]), self.labels))
        return dict(rows=rows, predicted=predicted)

    def score(self, predictions) -> dict[str, float]:
        gold = [self.eval_records[row]["tags"] for row in predictions["rows"]]
        report = spans.span_f1(gold, predictions["predicted"])
        if not report["n_gold"] and not report["n_predicted"]:
            note_undefined(self, ["eval/span_f1", "eval/span_precision", "eval/span_recall"],
                           f"the {len(gold)} scored sentences hold no gold entity and the model "
                           "predicted none (all O)")
        return {"span_f1": report["f1"], "span_precision": report["precision"],
                "span_recall": report["recall"]}

    @staticmethod
    def eval_metric_names(config) -> tuple[str, ...]:
        """What an eval reports (as eval/NAME), from the config alone
        (`tl_jax.tasks.eval_metric_names`): `loss_fn`'s loss and (sub-word) accuracy, and
        `score`'s entity spans."""
        del config
        return ("loss", "accuracy", "span_f1", "span_precision", "span_recall")

    def write_predictions(self, path, predictions) -> None:
        """CoNLL `word gold predicted` (`word predicted` for unlabelled sentences), a blank line
        between sentences: readable by conlleval when labelled. Written under a temporary name
        and renamed, as classify's jsonl: an interrupted write leaves no file of whole-looking
        sentences that stops short, and the previous file whole."""
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with paths.atomic_open(path, "w", encoding="utf-8") as f:
            for row, tags in zip(predictions["rows"], predictions["predicted"]):
                sentence = self.eval_records[row]
                gold = sentence["tags"]
                for i, (word, tag) in enumerate(zip(sentence["tokens"], tags)):
                    f.write(f"{word} {tag}\n" if gold is None else f"{word} {gold[i]} {tag}\n")
                f.write("\n")
