"""Extractive QA (SQuAD v1.1 / v2.0): fine-tuning BERT to point at answer start and end sub-tokens.

Data: `config.data.train_file` / `eval_file` are SQuAD JSON files (e.g. the silver `cloze_qa`
task from `tl_jax.data.task_builders`) or `tfds:squad/v1.1:SPLIT`. Question + context windows
come from `tl_jax.data.features.encode_squad` (doc stride over long contexts).

Loss: mean of start and end cross-entropy over each window's real tokens; a window without the
answer (or a v2.0 question without one) points at [CLS]. Such windows are trained on in v1.1 too,
as in BERT's `run_squad.py` (whose comment says they are thrown out, but whose code keeps them
with start = end = 0) and Hugging Face's `run_qa`: they teach the model to score spans low in a
window that lacks the answer, which decoding relies on when it compares spans across windows.
`data.skip_windows_without_answer=True` drops them from v1.1 training instead.

After each eval pass `evaluate` decodes n-best spans per question across its windows (a span
starts only in its start sub-token's max-context window, as in BERT; max answer length; for
`data.version="2.0"` the no-answer threshold), scores them with the official SQuAD EM/F1, and
writes
`WORKDIR/predictions/eval_step_N.json` (id -> answer) and `nbest_step_N.json`. Keep the best
checkpoint by `eval/f1`. With `train.eval_batches` > 0 only the questions whose windows were all
evaluated are decoded and scored.
"""
from __future__ import annotations

import contextlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from tl_jax import paths
from tl_jax.data import features, readers
from tl_jax.evaluation import squad as squad_eval
from tl_jax.models import heads
from tl_jax.tasks import downstream

# Decoding needs them; the device does not (kept out of the training and eval batches).
_HOST_ONLY = ("offsets", "max_context", "example_index")


def _check_version(version, train_file, train_records, eval_file, eval_records) -> None:
    """data.version must match the data: a mismatch would train or score silently wrong.

    v2.0 on data without an unanswerable question never learns "no answer" (e.g. the default
    `silver:cloze_qa`, built as v1.1); v1.1 on data with some drops them from training and scores
    them 0 on eval, since v1.1 always answers.
    """
    if version == "2.0" and not any(r["is_impossible"] for r in train_records):
        raise ValueError(
            f"data.version='2.0' but the training data {train_file} has no unanswerable question, "
            "so the model would never learn to answer \"\" (silver:cloze_qa is built as v1.1). "
            "Use SQuAD 2.0 data, or build the silver v2.0 task with 'tl_jax build_tasks "
            "--out_dir=DIR --qa_version=2.0' and pass --config.data.train_file=DIR/cloze_qa/"
            "train.json --config.data.eval_file=DIR/cloze_qa/dev.json; or use data.version=1.1")
    if version == "1.1":
        for spec, records in ((train_file, train_records), (eval_file, eval_records)):
            n = sum(r["is_impossible"] for r in records)
            if n:
                raise ValueError(
                    f"data.version='1.1' but {spec} has {n} unanswerable question(s) (SQuAD "
                    "2.0 data); v1.1 would skip them in training and score them 0. Set "
                    "--config.data.version=2.0")


def _skips_windows(d) -> bool:
    """`data.skip_windows_without_answer` (v1.1 only; absent in older configs: False)."""
    skip = bool(d.get("skip_windows_without_answer", False))
    if skip and d.version != "1.1":
        raise ValueError("data.skip_windows_without_answer=True is for data.version='1.1': v2.0 "
                         "learns \"no answer\" from the windows that point at [CLS]")
    return skip


def _note_answers_in_no_window(arrays, records, d) -> None:
    """Says how many answerable training questions no window holds whole (an answer longer than
    a window, or across a boundary where the windows overlap less than it is long): they are
    trained as unanswerable (every window points at [CLS]), or skipped with
    `data.skip_windows_without_answer`, which went unsaid."""
    held = np.zeros(len(records), bool)
    held[arrays["example_index"][arrays["start_positions"] > 0]] = True
    answerable = [bool(r["answers"]) for r in records]
    lost = sum(a and not h for a, h in zip(answerable, held))
    if lost:
        what = "skipped" if _skips_windows(d) else "trained as unanswerable"
        print(f"[squad] Note: {lost} of {sum(answerable)} answerable training questions have "
              f"their answer in no window whole, so they are {what}; a larger "
              f"data.max_seq_length or a smaller data.doc_stride={d.doc_stride} (more overlap) "
              "keeps them.", flush=True)


class Task(downstream.EncoderTask):
    """The `squad` task (contract: `tl_jax/tasks/__init__.py`)."""

    progress_keys = ("start_accuracy", "end_accuracy")
    summary_keys = ("eval/exact", "eval/f1")

    def __init__(self, config, workdir):
        self.config, d = config, config.data
        downstream.check_data_sizes(d)

        def read(spec, limit):
            records = readers.read_records(spec, "squad")
            return records[:limit] if limit else records

        self.train_records = read(d.train_file, d.max_train_examples)
        self.eval_records = read(d.eval_file, d.max_eval_examples)
        if d.version not in ("1.1", "2.0"):
            raise ValueError(f"data.version={d.version!r}; expected '1.1' or '2.0'")
        for key in ("n_best", "max_answer_length", "max_query_length", "doc_stride"):
            if d[key] < 1:  # 0 would silently answer nothing (EM = F1 = 0) or loop forever
                raise ValueError(f"data.{key}={d[key]} must be >= 1")
        room = d.max_seq_length - d.max_query_length - 3  # [CLS] question [SEP] context [SEP]
        if d.doc_stride > room > 0:  # (room <= 0: encode_squad's own error)
            # The windows would step by their length instead, without overlap: the setting
            # would be ignored, and every answer across a boundary lost.
            raise ValueError(
                f"data.doc_stride={d.doc_stride} is larger than the context a window holds beside "
                f"the longest question: data.max_seq_length={d.max_seq_length} - "
                f"data.max_query_length={d.max_query_length} - 3 = {room} sub-tokens. The "
                "stride is how far each window starts after the previous one (BERT's "
                "doc_stride, not Hugging Face's overlap); set it to at most that, e.g. half of "
                "it for windows that overlap by half")
        _skips_windows(d)  # the option's check, before the data's
        _check_version(d.version, d.train_file, self.train_records, d.eval_file,
                       self.eval_records)
        texts = [r["question"] for r in self.train_records] + sorted(
            {r["context"] for r in self.train_records})
        self._build(downstream.Encoder.from_config(config, texts, workdir), None)
        cut_train, cut_eval = [], []
        self.train_arrays = self._encode(self.train_records, cut_train)
        downstream.note_truncated(config, cut_train, len(self.train_records), "training")
        _note_answers_in_no_window(self.train_arrays, self.train_records, d)
        if _skips_windows(d):
            # Opt-in: v1.1 training without the windows that miss the answer. By default they
            # stay, pointing at [CLS], as in BERT's run_squad.py (v2.0 always keeps them: that
            # is how "no answer" is learned).
            has = self.train_arrays["start_positions"] > 0
            self.train_arrays = {k: v[has] for k, v in self.train_arrays.items()}
        for key in _HOST_ONLY:
            self.train_arrays.pop(key)
        self.eval_arrays = self.encode(self.eval_records, cut_eval)
        downstream.note_truncated(config, cut_eval, len(self.eval_records), "eval")
        downstream.fit_schedule(config, len(self.train_arrays["input_ids"]))

    def _build(self, encoder, labels):
        """The span model over `encoder` (training and `for_prediction`; QA has no labels)."""
        del labels
        self.encoder, self.model_config = encoder, encoder.model_config
        self.model = heads.BertForQuestionAnswering(self.model_config)
        seq = self.config.data.max_seq_length
        self.flops_per_example = downstream.encoder_flops(self.model_config, seq)
        self.tokens_per_example = seq

    def _encode(self, records, truncated=None):
        d = self.config.data
        return features.encode_squad(self.encoder.tokenizer, records, d.max_seq_length,
                                     d.doc_stride, d.max_query_length, truncated)

    def encode(self, records, truncated=None):
        """The eval windows of `records`; what only decoding needs is kept in `eval_host`."""
        arrays = self._encode(records, truncated)
        self.eval_host = {k: arrays.pop(k) for k in _HOST_ONLY}
        return arrays

    # -- data -------------------------------------------------------------------------------

    def example_batch(self, batch_size):
        seq = self.config.data.max_seq_length
        zeros = lambda *shape: np.zeros((batch_size,) + shape, np.int32)  # noqa: E731
        return dict(input_ids=zeros(seq), segment_ids=zeros(seq), input_mask=zeros(seq) + 1,
                    start_positions=zeros(), end_positions=zeros())

    # -- model ------------------------------------------------------------------------------

    def _logits(self, params, batch, rng, train):
        outputs = self._head_outputs(params, batch, rng, train)
        # Padding can never be an answer boundary.
        pad = jnp.where(batch["input_mask"] > 0, 0.0, -1e9)  # (B, L)
        return outputs["start_logits"] + pad, outputs["end_logits"] + pad

    def loss_fn(self, params, batch, rng, train):
        start_logits, end_logits = self._logits(params, batch, rng, train)
        # (B,): 0 on eval padding rows. Training windows are all real, one start and one end
        # each, so accumulated micro-batches count the same: no `loss_normalizers` needed.
        rows = (batch["input_mask"].sum(-1) > 0).astype(jnp.float32)
        start_sum, n = downstream.weighted_cross_entropy(start_logits, batch["start_positions"], rows)
        end_sum, _ = downstream.weighted_cross_entropy(end_logits, batch["end_positions"], rows)
        loss_sum = 0.5 * (start_sum + end_sum)
        start_ok = ((jnp.argmax(start_logits, -1) == batch["start_positions"]) * rows).sum()
        end_ok = ((jnp.argmax(end_logits, -1) == batch["end_positions"]) * rows).sum()
        metrics = dict(loss=(loss_sum, n), start_accuracy=(start_ok, n), end_accuracy=(end_ok, n))
        return loss_sum / jnp.maximum(n, 1.0), metrics

    def predict_fn(self, params, batch):
        start_logits, end_logits = self._logits(params, batch, jax.random.PRNGKey(0), False)
        return dict(start_logits=start_logits, end_logits=end_logits, row=batch["row"])

    predictions_extension = ".json"

    def write_eval_predictions(self, directory, step, predictions) -> None:
        """`eval_step_N.json` and the n-best spans in `nbest_step_N.json`."""
        self.write_predictions(os.path.join(directory, f"eval_step_{step}.json"), predictions,
                               os.path.join(directory, f"nbest_step_{step}.json"))

    # -- decoding, scoring and writing the eval set's predictions (eval and `tl_jax predict`) --

    def decode(self, batches_and_outputs) -> dict:
        """`{"records", "answers", "nbest"}`: the eval questions decoded (those whose windows
        were all evaluated), id -> answer text, id -> n-best list."""
        d = self.config.data
        windows, example_of = [], self.eval_host["example_index"]
        seen = np.zeros(len(self.eval_records), np.int64)
        for _, out in batches_and_outputs:
            for row, start, end in zip(out["row"], out["start_logits"], out["end_logits"]):
                if row < 0:
                    continue
                seen[example_of[row]] += 1
                record = self.eval_records[example_of[row]]
                windows.append(dict(id=record["id"], start_logits=start, end_logits=end,
                                    offsets=self.eval_host["offsets"][row],
                                    max_context=self.eval_host["max_context"][row]))
        # Score the questions whose windows were all evaluated: with train.eval_batches > 0 the
        # pass stops early, and the questions it never reached are not wrong answers.
        complete = seen == np.bincount(example_of, minlength=len(self.eval_records))
        records = [r for r, ok in zip(self.eval_records, complete) if ok] or \
            [r for r, n in zip(self.eval_records, seen) if n]
        ids = {r["id"] for r in records}
        contexts = {r["id"]: r["context"] for r in records}
        answers, nbest = squad_eval.decode_predictions(
            [w for w in windows if w["id"] in ids], contexts, n_best=d.n_best,
            max_answer_length=d.max_answer_length, version_2=d.version == "2.0",
            null_threshold=d.null_threshold)
        return dict(records=records, answers=answers, nbest=nbest)

    def score(self, predictions) -> dict[str, float]:
        gold = {r["id"]: [a["text"] for a in r["answers"]] for r in predictions["records"]}
        report = squad_eval.evaluate(gold, predictions["answers"])
        return {k: v for k, v in report.items() if not k.endswith("total")}

    @staticmethod
    def eval_metric_names(config) -> tuple[str, ...]:
        """What an eval can report (as eval/NAME), from the config alone
        (`tl_jax.tasks.eval_metric_names`): `loss_fn`'s loss and span-boundary accuracies, and
        `score`'s EM and F1; for data.version=2.0 also the official HasAns_/NoAns_ breakdown,
        which `squad_eval.evaluate` gives only when the scored questions hold both kinds."""
        names = ("loss", "start_accuracy", "end_accuracy", "exact", "f1")
        if config.data.version == "2.0":
            names += ("HasAns_exact", "HasAns_f1", "NoAns_exact", "NoAns_f1")
        return names

    def write_predictions(self, path, predictions, nbest_path=None) -> None:
        """SQuAD's predictions JSON (id -> answer text), and the 5 best spans per question to
        `nbest_path` when given.

        Each file is written under a temporary name and renamed once both are complete (as
        classify's jsonl): an interrupted write leaves the previous files whole, not a JSON
        that stops mid-answer or an n-best file of another run beside new predictions."""
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        outputs = [(path, predictions["answers"])]
        if nbest_path:
            outputs.append((nbest_path, {q: v[:5] for q, v in predictions["nbest"].items()}))
        with contextlib.ExitStack() as files:
            for target, value in outputs:
                # UTF-8 whatever the locale: answers hold any character of the contexts.
                f = files.enter_context(paths.atomic_open(target, "w", encoding="utf-8"))
                json.dump(value, f, ensure_ascii=False, indent=1)
