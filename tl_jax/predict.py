"""`tl_jax predict`: a fine-tuned workdir applied to a new file.

    tl_jax predict --workdir=WORKDIR --input=FILE --output=FILE [--batch_size=N]

For a `classify`, `probe` (`configs/transfer_*.py`), `tag`, `squad` or `lm_classify` (GPT
classifier) run it loads the run's config (`config.json`), tokenizer (`tokenizer/`: WordPiece, or
the GPT's BPE), labels (`labels.jsonl`) and the best checkpoint the run kept by its
`train.best_metric` (else the newest), reads FILE in the formats the task's training files take,
and writes the predictions in the format of the run's own eval predictions: jsonl (classify,
probe, lm_classify), CoNLL `word gold predicted` or `word predicted` (tag), SQuAD predictions JSON
plus `OUTPUT.nbest.json` (squad). Labels, tags and answers are optional; when every record has
them, the task's eval metrics are printed too, computed by the same code as during training, so
on the run's eval file they are the run's own figures.

The checkpoint holds the whole model, `init_from` is not read: a probe's frozen encoder (and any
adapters, LoRA or re-initialised layers) is the one it trained against. A probe trained on cached
features (`probe.cache_features`) gets the same features from that encoder as it predicts; no
feature cache is read or written.

The model runs through the trainer's own eval pass (`train.build_trainer` with this task,
`train.eval_pass`) and the task's own decoding (`decode`, `score`, `write_predictions`), so
batching, padding of the last batch, truncation and SQuAD's windows are those of the eval.
"""
from __future__ import annotations

import importlib
import math
import os

import jax
import ml_collections

from tl_jax import checkpoint, parallel, train
from tl_jax.data import readers
from tl_jax.optim.optimizers import path_str
from tl_jax.tasks import downstream

# config.task -> (module, reader kind, the record field holding the label, what the labels are)
TASKS = {
    "classify": ("tl_jax.tasks.classify", "classification", "label", "labels"),
    "probe": ("tl_jax.tasks.probe", "classification", "label", "labels"),
    "tag": ("tl_jax.tasks.tag", "tagging", "tags", "tags"),
    "squad": ("tl_jax.tasks.squad", "squad", "answers", "answers"),
    "lm_classify": ("tl_jax.tasks.lm_classify", "classification", "label", "labels"),
}

# Where to go instead, for workdirs of other tasks.
OTHER_COMMANDS = {
    "bert_pretrain": "`tl_jax fill_mask` or `tl_jax extract`",
    "electra": "`tl_jax fill_mask` (its generator) or `tl_jax extract`",
    "distill": "`tl_jax fill_mask` or `tl_jax extract`",
    "clm": "`tl_jax generate`",
}


def check_workdir(workdir: str) -> dict:
    """The run config of a fine-tuned `classify`/`probe`/`tag`/`squad`/`lm_classify` workdir, or
    a one-line error."""
    if not os.path.isdir(workdir):
        raise FileNotFoundError(f"--workdir={workdir} does not exist")
    if not os.path.isfile(os.path.join(workdir, "config.json")):
        raise ValueError(f"{workdir} has no config.json: not a workdir of `tl_jax train`")
    config = checkpoint.load_run_config(workdir)
    task = config.get("task")
    if task not in TASKS:
        elsewhere = OTHER_COMMANDS.get(task)
        raise ValueError(
            f"{workdir} was trained with task={task!r}, not a fine-tuned classify, probe, tag, "
            "squad or lm_classify run; `tl_jax predict` applies those"
            + (f" (for this one see {elsewhere})" if elsewhere else ""))
    return config


# What `tl_jax train` writes in a workdir besides checkpoints/: predictions must not replace them.
RUN_FILES = ("config.json", "labels.jsonl", "metrics.jsonl", "summary.json", "vocab.txt")
RUN_DIRS = ("tokenizer", "tensorboard")
# What a model folder (Hugging Face's, or `tl_jax convert`'s output) holds besides config.json
# and vocab.txt: `generate` and `extract` read them, so their outputs must not replace them.
MODEL_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
               "vocab.json", "merges.txt", "model.safetensors", "model.safetensors.index.json",
               "pytorch_model.bin", "pytorch_model.bin.index.json", "tf_model.h5",
               "flax_model.msgpack", "params.safetensors")


def nbest_path(output: str) -> str:
    """Where a squad run's n-best spans go beside `output`: OUT.json -> OUT.nbest.json."""
    stem = output[:-len(".json")] if output.endswith(".json") else output
    return stem + ".nbest.json"


def check_outputs(output: str, input_spec: str, workdir: str, task: str) -> None:
    """`check_output` for each file predict writes: squad's OUT.nbest.json would replace the
    input or a run file as surely as OUT itself (it overwrote an input named OUT.nbest.json)."""
    check_output(output, input_spec, workdir)
    if task == "squad":
        check_output(nbest_path(output), input_spec, workdir,
                     what=f"--output={output}'s n-best file {nbest_path(output)}")


def check_output(output: str, input_spec: str, workdir: str, what: str = "",
                 command: str = "predict") -> None:
    """The output must not overwrite the input, land among the run's checkpoints, or replace a
    file the run wrote (its config, label list, metrics, tokenizer) or a model folder's file
    (its weights, tokenizer). `what` names the file in the messages (default
    `--output=OUTPUT`); `command` the command that reads them (`generate`, `extract`)."""
    what = what or f"--output={output}"
    out = os.path.realpath(output)
    if os.path.exists(input_spec) and out == os.path.realpath(input_spec):
        raise ValueError(f"{what} is the input file; choose another path")
    checkpoints = os.path.realpath(os.path.join(workdir, "checkpoints"))
    if out == checkpoints or out.startswith(checkpoints + os.sep):
        raise ValueError(f"{what} is inside {checkpoints}, which the run's "
                         "checkpoint manager owns; write it elsewhere (e.g. WORKDIR/predictions/)")
    root = os.path.realpath(workdir)
    run_files = [os.path.join(root, name) for name in RUN_FILES + MODEL_FILES]
    run_dirs = [os.path.join(root, name) for name in RUN_DIRS]
    if out in run_files or any(out == d or out.startswith(d + os.sep) for d in run_dirs):
        held = (f"the run in {workdir} wrote" if os.path.isdir(checkpoints)
                else f"the model in {workdir} holds")
        raise ValueError(f"{what} would replace {out}, which {held} ({command} reads it); "
                         "write it elsewhere (e.g. WORKDIR/predictions/)")
    if os.path.isdir(output):
        raise ValueError(f"{what} is a directory; name a file")


def read_input(config, input_spec: str) -> list[dict]:
    """The records of `input_spec`, read as the run read its eval file, labels optional."""
    kind = TASKS[config.task][1]
    fields = {}
    if kind == "classification":
        d = config.data
        fields = dict(text_field=d.text_field, label_field=d.label_field)
        if config.task != "lm_classify":  # the GPT classifier reads single texts
            fields["text_b_field"] = d.text_b_field or None
    return readers.read_records(input_spec, kind, require_labels=False, **fields)


def check_known_labels(config, records, labels, input_spec: str, workdir: str) -> None:
    """Labels in the file that the model has no output for cannot be scored: a clear error."""
    what = TASKS[config.task][3]
    unknown = sorted(set(downstream.labels_of(records, what)) - set(labels))
    if unknown:
        where = downstream.first_use(input_spec, records, unknown, what)
        raise ValueError(f"{where}: {what} {unknown} are not among the {len(labels)} the "
                         f"model in {workdir} was trained with ({list(labels)}, labels.jsonl); "
                         f"remove the {what} column/field to get predictions only")


def load_params(trainer, workdir: str, step: int):
    """The params of checkpoint `step`, in the trainer's shardings."""
    flat, _ = checkpoint.load_params_from_workdir(workdir, step=step)
    missing = []

    def pick(path, leaf):
        name = path_str(path)
        if name not in flat or tuple(flat[name].shape) != tuple(leaf.shape):
            missing.append(name)
            return None
        return flat[name].astype(leaf.dtype, copy=False)

    params = jax.tree_util.tree_map_with_path(pick, trainer.abstract_state["params"])
    if missing:
        raise checkpoint.CheckpointError(
            f"checkpoint {step} of {workdir} does not hold the model its config builds "
            f"(missing or of another shape: {', '.join(missing[:3])})")
    # Each device gets its own slice from host memory: on several processes jax.device_put
    # first gathered every whole tensor onto every device, so the model had to fit on one.
    return jax.tree_util.tree_map(checkpoint.put_from_host, params,
                                  trainer.state_shardings["params"])


def fit_mesh(config):
    """The run's mesh when it fits the devices here; else data parallelism over all of them (a
    model fine-tuned on a pod slice, applied on a laptop), written back to `config.mesh`."""
    try:
        return parallel.make_mesh(config.mesh)
    except parallel.MeshError:
        # Says what predict does, and only that: the MeshError's advice is for training
        # ("Set mesh.data/fsdp/tensor so that they multiply to 1"), while predict picks its mesh.
        n = jax.device_count()
        sizes = ", ".join(f"{axis}={config.mesh[axis]}" for axis in
                          (("num_devices",) if config.mesh.get("num_devices") else ())
                          + parallel.MESH_AXES)
        print(f"[predict] The run's mesh ({sizes}) does not fit the {n} device"
              f"{'' if n == 1 else 's'} here; "
              + ("predicting on that one device." if n == 1 else
                 f"predicting with data parallelism over all {n} of them."), flush=True)
        config.mesh = parallel.default_config()
        return parallel.make_mesh(config.mesh)


def run(workdir: str, input_spec: str, output: str, batch_size: int = 0) -> dict:
    """Predicts `input_spec` with the fine-tuned run in `workdir` and writes `output`.

    Returns `{"step", "why", "examples", "labelled", "metrics", "output"}`; `metrics` is empty
    unless every record of the input has its label (tags, answers).
    """
    if batch_size < 0:  # before anything is loaded; numpy would refuse the shape much later
        raise ValueError(f"--batch_size={batch_size} must be at least 1 (or 0 for the run's "
                         "data.batch_size)")
    # The shell leaves '~' after '--output=' as it is: unexpanded, the predictions went to a
    # folder named '~' under the current one, while the message named ~/...
    workdir, output = os.path.expanduser(workdir), os.path.expanduser(output)
    saved = check_workdir(workdir)
    input_spec = os.path.expanduser(os.path.expandvars(input_spec))
    check_outputs(output, input_spec, workdir, saved["task"])
    config = ml_collections.ConfigDict(saved)
    # The processes of this command (TL_JAX_COORDINATOR etc.), not the training run's: a
    # coordinator saved in config.json is the address of a pod that may be long gone. Started
    # before anything touches a device (fit_mesh does), as jax.distributed requires.
    config.distributed = parallel.distributed_config()
    parallel.maybe_initialize_distributed(config.distributed)
    if batch_size:
        config.data.batch_size = int(batch_size)
    step, why = checkpoint.best_step(workdir, config.train.best_metric, config.train.best_mode)
    records = read_input(config, input_spec)
    field = TASKS[config.task][2]
    labelled = sum(r[field] is not None for r in records)
    labels = downstream.read_labels(workdir) if config.task != "squad" else None
    if labels is not None:
        check_known_labels(config, records, labels, input_spec, workdir)
    print(f"[predict] {workdir}: step {step}, {why}.", flush=True)

    resolved = checkpoint.config_from_workdir(workdir, step).get("resolved_model")
    task_module = importlib.import_module(TASKS[config.task][0])
    if config.task == "lm_classify":  # a GPT and its BPE tokenizer
        encoder = task_module.of_run(workdir, resolved)
    else:
        encoder = downstream.Encoder.of_run(config, workdir, resolved)
    if config.task == "squad" and config.data.version == "1.1":
        impossible = sum(bool(r.get("is_impossible")) for r in records)
        if impossible:
            print(f"[predict] Note: {impossible} of {len(records)} questions in {input_spec} are "
                  "unanswerable (SQuAD 2.0); this run was trained as data.version='1.1', which "
                  "always answers, so their exact match and F1 are 0.", flush=True)
    mesh = fit_mesh(config)
    # Prediction takes no optimizer step: the run's gradient accumulation would refuse batch
    # sizes that it does not divide, or that split into micro-batches the devices do not divide.
    config.optimizer.grad_accum_steps = 1
    if not batch_size:
        # The run's batch over other devices (16 on 3): the nearest that they divide, rather
        # than a refusal after the note that it predicts with data parallelism over them.
        shards = math.lcm(math.prod(mesh.shape[a] for a in parallel.BATCH_AXES),
                          jax.process_count())
        fitted = max(shards, int(config.data.batch_size) // shards * shards)
        if fitted != int(config.data.batch_size):
            print(f"[predict] The run's data.batch_size={config.data.batch_size} does not "
                  f"divide over the {shards} data-parallel shards here; predicting in batches of "
                  f"{fitted} (--batch_size sets another).", flush=True)
            config.data.batch_size = fitted
    try:
        parallel.check_batch_size(int(config.data.batch_size), mesh,
                                  name=f"--batch_size={config.data.batch_size}" if batch_size
                                  else f"The run's data.batch_size={config.data.batch_size}")
    except parallel.MeshError as e:
        raise parallel.MeshError(f"{e} Pass a --batch_size that they divide.") from None
    truncated = []
    task = task_module.Task.for_prediction(config, encoder, labels, records, truncated)
    downstream.note_truncated(config, truncated, len(records), "predict", input_spec, records)
    trainer = train.build_trainer(config, workdir, task=task)
    params = load_params(trainer, workdir, step)

    scored = labelled == len(records)
    results, outputs = train.eval_pass(trainer, params, with_loss=scored,
                                       progress=bool(config.train.progress))
    predictions = task.decode(outputs)
    if jax.process_index() == 0:  # every process decoded the whole set; one writes it
        if config.task == "squad":
            task.write_predictions(output, predictions, nbest_path(output))
        else:
            task.write_predictions(output, predictions)
        print(f"[predict] Wrote {len(records)} predictions to {output}.", flush=True)

    metrics = {}
    if scored:
        metrics = {f"eval/{k}": float(v) for k, v in train.average(results).items()}
        metrics.update({f"eval/{k}": float(v) for k, v in task.score(predictions).items()})
        print(f"[predict] Metrics on {input_spec}: " + " | ".join(
            f"{k.removeprefix('eval/')} {v:.4f}" for k, v in sorted(metrics.items())), flush=True)
    elif labelled:
        print(f"[predict] Note: only {labelled} of {len(records)} records have "
              f"{TASKS[config.task][3]}; no metrics.", flush=True)
    return dict(step=step, why=why, examples=len(records), labelled=labelled, metrics=metrics,
                output=output)
