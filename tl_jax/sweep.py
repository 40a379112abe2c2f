"""`tl_jax sweep`: one config trained over a grid of settings and seeds, gathered into tables
and plots (paper ablations: masking ratios, LAMB batch scaling, word2vec window sizes, ...).
The config is a `tl_jax train` one, or a `tl_jax static` one (word2vec, GloVe).

    tl_jax sweep --config=configs/bert_pretrain.py:tiny --workdir=DIR \\
        --grid=data.masked_lm_prob=0.1,0.15,0.3 --seeds=0,1 --config.train.steps=200

Each `--grid=KEY=V1,V2,...` is an axis; the runs are the product of the axes and the seeds.
`--zip` axes move together instead (all of the same length): `--zip=data.batch_size=16,64
--zip=optimizer.learning_rate=1e-3,2e-3` is two settings, not four. `--config.*` overrides
apply to every run. Every run is an ordinary workdir under DIR/runs/ (checkpoints, metrics,
resume). A sweep run again skips the finished runs and resumes an interrupted one, so a
killed sweep loses at most the steps since a run's last checkpoint; a run trained with other
settings (a changed `--config.*` override) is refused, not reported as this sweep's. More
`train.steps` resumes the runs and trains on; fewer is refused for runs already past them. A
failed run is reported and the others go on. A static run trained while its eval_dir lacked
the evaluation files has its saved vectors scored (no training) by a rerun that has them. One
sweep at a time trains in DIR: a second one started there is refused (DIR/sweep.lock).

On a multi-process launch, a train sweep trains each run on every process together (process 0
alone prints the sweep's lines); a static sweep runs on process 0 alone, as `tl_jax static`
does, and the other processes say so and exit.

Written to DIR (by process 0 alone, in a multi-process run): results.csv (one row per run),
results.md (one row per setting: mean ± population std over seeds; a cell over fewer seeds, some
non-finite or missing, says how many), results.json, and, with matplotlib installed, curves.png
(held-out metrics over steps, one line per setting) and, when one axis is numeric, final.png
(each metric against it).
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import itertools
import json
import math
import os
import re
import socket
import time
import traceback
from typing import Sequence

import numpy as np

from tl_jax import checkpoint
from tl_jax import config as config_lib


@dataclasses.dataclass
class Run:
    setting: tuple[tuple[str, str], ...]   # (key, value text) per axis, in axis order
    seed: int
    name: str

    @property
    def overrides(self) -> list[str]:
        return [f"{k}={v}" for k, v in self.setting] + [f"seed={self.seed}"]


def split_values(text: str) -> list[str]:
    """Splits `a,b,c` on commas outside brackets and quotes: `(1,2),(3,4)` is two values."""
    values, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            values.append(text[start:i].strip())
            start = i + 1
    values.append(text[start:].strip())
    return values


def parse_axis(spec: str, flag: str) -> tuple[str, list[str]]:
    key, sep, values = spec.partition("=")
    key = key.strip()
    if not sep or not key or not values.strip():
        raise config_lib.ConfigError(f"--{flag}={spec!r}: expected KEY=V1,V2,...")
    parts = split_values(values)
    if any(not v for v in parts):
        raise config_lib.ConfigError(f"--{flag}={spec!r}: an empty value")
    if flag == "grid" and len(set(parts)) != len(parts):
        raise config_lib.ConfigError(f"--{flag}={spec!r}: a value repeats")
    return key, parts


def _short(key: str, keys: Sequence[str]) -> str:
    """The last part of a dotted key, unless another axis ends the same way."""
    last = key.rsplit(".", 1)[-1]
    return last if sum(k.rsplit(".", 1)[-1] == last for k in keys) == 1 else key


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]+", "_", text).strip("_") or "_"


def plan(grid: Sequence[str] = (), zipped: Sequence[str] = (),
         seeds: Sequence[int] = (0,)) -> list[Run]:
    """The runs of a sweep: the product of the grid axes (and the zipped group), times seeds."""
    axes = [parse_axis(s, "grid") for s in grid]
    zip_axes = [parse_axis(s, "zip") for s in zipped]
    keys = [k for k, _ in axes + zip_axes]
    if len(set(keys)) != len(keys):
        raise config_lib.ConfigError(f"sweep: a key is swept twice: {keys}")
    if "seed" in keys:
        raise config_lib.ConfigError("sweep: give seeds with --seeds, not as an axis")
    if len({len(v) for _, v in zip_axes}) > 1:
        lengths = {k: len(v) for k, v in zip_axes}
        raise config_lib.ConfigError(f"sweep: --zip axes must have one length each, got {lengths}")
    if not seeds:  # --seeds= (or --seeds=,): "seeds must be distinct, got []" said nothing
        raise config_lib.ConfigError("sweep: no seeds given; --seeds takes comma-separated "
                                     "integers, e.g. --seeds=0,1,2")
    if len(set(seeds)) != len(seeds):
        raise config_lib.ConfigError(f"sweep: seeds must be distinct, got {list(seeds)}")
    if not axes and not zip_axes and len(seeds) < 2:  # seeds alone: one setting's variance
        raise config_lib.ConfigError("sweep: nothing to sweep (give --grid and/or --zip, or two "
                                     "or more --seeds)")
    factors = [[((k, v),) for v in values] for k, values in axes]
    if zip_axes:
        # A zipped value may repeat (batch 16 with two learning rates); a whole setting not.
        group = [tuple((k, values[i]) for k, values in zip_axes)
                 for i in range(len(zip_axes[0][1]))]
        if len(set(group)) != len(group):
            raise config_lib.ConfigError(f"sweep: the --zip axes repeat a setting: {group}")
        factors.append(group)
    runs = []
    for combo in itertools.product(*factors):
        setting = tuple(pair for group in combo for pair in group)
        parts = [_safe(f"{_short(k, keys)}={v}") for k, v in setting]
        for seed in seeds:
            runs.append(Run(setting, int(seed), "__".join(parts + [f"seed={seed}"])))
    if len({r.name for r in runs}) != len(runs):
        raise config_lib.ConfigError("sweep: two settings give the same run name; use values "
                                     "that differ in letters or digits")
    return runs


# Settings that change how a run reports or saves, not what it learns: a sweep rerun may change
# them. (`train.steps` may change too: a run then resumes and trains on, or is already done;
# one that trained past the new value is refused, as it cannot go back.)
OPERATIONAL_KEYS = ("train.progress", "train.log_every", "train.checkpoint_every",
                    "train.keep_checkpoints", "train.async_checkpoint", "train.steps",
                    "progress")  # the last, a static (word2vec, GloVe) config's


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _as_saved(config: dict) -> dict:
    """`config` flat, as a run saves it: tuples as lists, NaN as "nan", anything else by its
    str()."""
    from tl_jax.metrics_writer import json_safe
    return _flat(json.loads(json.dumps(json_safe(config), default=str)))


def _saved_config_differences(saved: dict, current: dict, defaults: dict | None = None
                              ) -> list[str]:
    """What differs between a run's saved config and this sweep's config for it. A key the
    saved config lacks (added to the config file since the run was trained) is no difference
    while it holds the config file's default (`defaults`): new keys default to what the code
    did before them (data.mask_token_prob=0.8 is the masking every earlier run had). Set to
    anything else, it is one."""
    a, b = _flat(saved), _as_saved(current)
    defaults = _as_saved(defaults) if defaults is not None else {}
    return [f"{k}: {a.get(k, '(absent)')!r} there, {b.get(k, '(absent)')!r} now"
            for k in sorted(set(a) | set(b))
            if k not in OPERATIONAL_KEYS and k != "eval_dir" and a.get(k) != b.get(k)
            and not (k not in a and k in defaults and b.get(k) == defaults[k])]


# What a fine-tuning task fills from `data.num_epochs` when it is 0 (`downstream.fit_schedule`);
# a run's config.json holds the filled value.
EPOCH_FILLED_KEYS = ("steps", "eval_every", "checkpoint_every")


def _fills_schedule_from_epochs(config: dict) -> bool:
    return isinstance(config.get("data"), dict) and "num_epochs" in config["data"]


def _check_earlier_runs(workdir: str, runs: list["Run"], configs: dict, saved_name: str,
                        defaults: dict | None = None) -> None:
    """Refuses a sweep whose workdir holds runs trained with other settings: their results
    would be reported (or resumed) as this sweep's. `defaults`: the config file's own values
    (no override), for keys added to it since a run was trained."""
    for r in runs:
        path = os.path.join(workdir, "runs", r.name, saved_name)
        if not os.path.exists(path):
            continue
        saved = checkpoint.load_json(path, "the config of an earlier run of this sweep")
        current = configs[r.name].to_dict()
        if saved_name == "static_config.json":
            # Keys added to the static configs since the run was saved hold the value that
            # trained it, as `tl_jax static` fills them when it reruns in that workdir.
            from tl_jax import static_train
            static_train._with_later_keys(saved)
            static_train._with_later_keys(current)
        if _fills_schedule_from_epochs(current) and isinstance(saved.get("train"), dict):
            # A 0 here is one epoch (or data.num_epochs epochs) there, as the task filled it.
            for key in EPOCH_FILLED_KEYS:
                if current["train"].get(key) == 0 and key in saved["train"]:
                    current["train"][key] = saved["train"][key]
        diffs = _saved_config_differences(saved, current, defaults)
        if diffs:
            raise config_lib.ConfigError(
                f"sweep: {os.path.dirname(path)} was trained with other settings:\n  "
                + "\n  ".join(diffs[:10]) + ("\n  ..." if len(diffs) > 10 else "")
                + "\nUse another sweep workdir (or delete that run).")


def _check_masking_cap(runs: list["Run"], configs: dict) -> None:
    """Refuses a swept `data.masked_lm_prob` that `data.max_predictions_per_seq` caps: the masker
    picks min(cap, round(prob x maskable tokens)), so at BERT tiny's 64 tokens and cap 20 a 0.5
    run masks ~0.33, and its row would be labelled 0.5."""
    key = "data.masked_lm_prob"
    if not any(k == key for k, _ in runs[0].setting):
        return
    capped, most = [], 0
    for r in runs:
        data = configs[r.name].get("data", {})
        if not all(k in data for k in ("masked_lm_prob", "max_predictions_per_seq",
                                       "max_seq_length")):
            return
        maskable = int(data.max_seq_length) - 3  # [CLS] A [SEP] B [SEP]
        wanted = int(round(maskable * float(data.masked_lm_prob)))
        if wanted > int(data.max_predictions_per_seq):
            capped.append(f"{dict(r.setting)[key]} (wants {wanted} of {maskable})")
            most = max(most, wanted)
    if capped:
        raise config_lib.ConfigError(
            f"sweep: data.max_predictions_per_seq caps the masking of "
            f"{', '.join(dict.fromkeys(capped))}: a full-length sequence would be masked less "
            "than its row says. Raise --config.data.max_predictions_per_seq (to "
            f"{most} or more).")


def _step_reached(run_dir: str) -> int | None:
    """The furthest step a run's workdir holds: its newest checkpoint or its summary.json."""
    steps = []
    directory = os.path.join(run_dir, "checkpoints")
    if os.path.isdir(directory):
        steps += [int(n) for n in os.listdir(directory) if n.isdigit()]
    path = os.path.join(run_dir, "summary.json")
    if os.path.exists(path):
        step = checkpoint.load_json(path, "the final scores of an earlier run of this sweep")
        if isinstance(step.get("step"), int):
            steps.append(step["step"])
    return max(steps, default=None)


def _past_steps_message(names_steps: list[tuple[str, int]], steps: int) -> str:
    return (f"{len(names_steps)} run(s) of this sweep already trained past train.steps={steps} "
            f"({', '.join(f'{n} at step {s}' for n, s in names_steps[:5])}"
            f"{', ...' if len(names_steps) > 5 else ''}): a run cannot go back, so the table "
            "would show their longer runs' figures as this setting's, beside any run trained "
            f"for {steps}. Rerun with the train.steps they were trained for, or use another "
            "sweep workdir.")


def _finished(run_dir: str, steps: int) -> dict | None:
    path = os.path.join(run_dir, "summary.json")
    if not os.path.exists(path):
        return None
    summary = checkpoint.load_json(path, "the final scores of an earlier run of this sweep")
    return summary if summary.get("step") == steps else None


def _static_scores(run_dir: str) -> dict | None:
    path = os.path.join(run_dir, "scores.json")
    if not os.path.exists(path):
        return None
    return checkpoint.load_json(path, "the scores of an earlier run of this sweep")


# Of the scores `tl_jax static` writes, those the tables show by default.
STATIC_METRICS = ("wordsim353_spearman", "simlex999_spearman", "analogy_accuracy", "final_loss")


def _train_metric_names(config) -> list[str]:
    """What a train run of `config` reports: its last training loss ("train/loss") and, where it
    evaluates, its task's held-out metrics ("eval/NAME", as the task declares them from the
    config: `tasks.eval_metric_names`)."""
    from tl_jax import tasks

    evaluates = bool(config.train.eval_every) or _fills_schedule_from_epochs(config.to_dict())
    return ["train/loss"] + (list(tasks.eval_metric_names(config)) if evaluates else [])


def _check_train_settings(config) -> None:
    """The `train.*` values the trainer refuses once a run's data is read and its task built
    (`train.check_train_config`: steps, intervals, best_mode, ...; `train.check_best_metric`),
    checked for a sweep's every run before the first trains: a swept `train.best_mode=mx` or
    a misspelt `--config.train.best_metric` failed only when each run's turn came. The keys a
    fine-tuning task fills from its epochs (0 here) are left to the run, which fills them."""
    import ml_collections

    from tl_jax import train

    tc = ml_collections.ConfigDict(config.train.to_dict())
    if _fills_schedule_from_epochs(config.to_dict()):
        for key in EPOCH_FILLED_KEYS:
            if tc.get(key) == 0:
                tc[key] = 1  # any valid value: the task puts one epoch's steps here
    train.check_train_config(tc)
    train.check_best_metric(config)  # left to the run where eval_every is still 0
    if "transfer" in config:
        _check_transfer_settings(config)
    if "probe" in config:
        from tl_jax.tasks import probe
        probe.check_config(config.probe)  # a swept probe.feature=last,layer_3


def _check_transfer_settings(config) -> None:
    """The `transfer.*` values that are wrong whatever the model (the strategy, the schedule,
    the rules' syntax, `transfer.check_config`), checked for a sweep's every run before the
    first trains: a swept `transfer.strategy=chain_thw` failed only when its turn came, after
    the runs before it had trained. What needs the model (a rule matching no parameter, a
    layer count) is left to the run."""
    from tl_jax.optim import masks, transfer

    masks.compile_rules(config.transfer.rules)
    transfer.check_config(config.transfer, config.optimizer)


def _check_train_metrics(metrics: Sequence[str], runs: list["Run"], configs: dict) -> None:
    """Refuses, before the first run trains, a --metrics name a train run would not report (a
    misspelt eval/ name was found only once every run had trained), naming what it reports."""
    reported = {}
    for r in runs:
        try:
            reported[r.name] = _train_metric_names(configs[r.name])
        except ValueError as e:  # an unknown config.task
            raise ValueError(f"sweep run {r.name}: {e}") from None
    for name in metrics:
        missing = [r for r in runs if name not in reported[r.name]]
        if not missing:
            continue
        config, names = configs[missing[0].name], reported[missing[0].name]
        if len(names) > 1:
            what = f"its held-out metrics {', '.join(names[1:])}"
        elif not (config.train.eval_every or _fills_schedule_from_epochs(config.to_dict())):
            what = "no held-out metrics here (train.eval_every=0)"
        elif config.data.get("eval_fraction", None) == 0:
            what = "no held-out metrics here (data.eval_fraction=0 holds nothing out)"
        else:
            what = f"no held-out metrics here (task {config.task!r} reports none)"
        raise config_lib.ConfigError(
            f"sweep: --metrics={name}: "
            + ("no run reports it; a train run reports" if len(missing) == len(runs) else
               f"run {missing[0].name} would not report it; it reports")
            + f" train/loss and {what}")


def _curves(run_dir: str) -> tuple[dict[str, list[tuple[int, float]]], float | None]:
    """Held-out metrics over steps, and the last logged training loss, from metrics.jsonl."""
    curves: dict[str, list[tuple[int, float]]] = {}
    last_loss = None
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return curves, None
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a row cut short by a kill; the trainer sets such rows aside on resume
            for key, value in row.items():
                if key.startswith("eval/") and isinstance(value, (int, float)):
                    curves.setdefault(key, []).append((int(row["step"]), float(value)))
            loss = row.get("loss")
            if isinstance(loss, (int, float)):
                last_loss = float(loss)
            elif loss in ("nan", "inf", "-inf"):  # as json_safe wrote it: a diverged run's
                last_loss = float(loss)           # last loss, not its last finite one
    return curves, last_loss


def _number(text: str):
    value = config_lib.parse_value(text)
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _mean_std(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std())


# The file a running sweep holds in its workdir (process 0's; process N of a multi-process sweep
# holds `sweep.lock.N`, so that every process of a second sweep is refused, not process 0 alone).
LOCK_NAME = "sweep.lock"


def _holder_text(holder: dict) -> str:
    return (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, started "
            f"{holder.get('started', '?')}")


def _lock_is_stale(holder: dict) -> bool:
    """Whether the sweep that wrote a lock is gone: its process no longer runs on this host. A
    lock from another host cannot be checked from here, and stays held."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    try:
        os.kill(holder["pid"], 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's process
        return False
    return False


def _remove_if_unchanged(path: str, holder: dict) -> None:
    """Removes the lock at `path` if it still holds `holder`, the stale lock read a moment ago.

    Another sweep may have taken the same stale lock over in between and written its own there:
    unlinking `path` would remove that one and let both sweeps run. So the file is first moved
    aside (an atomic rename: of several sweeps doing this, one moves it), read, and put back if
    it is not the stale one."""
    aside = f"{path}.{socket.gethostname()}.{os.getpid()}.taking-over"
    try:
        os.rename(path, aside)
    except FileNotFoundError:  # another sweep removed it first
        return
    try:
        with open(aside, encoding="utf-8") as f:
            moved = json.load(f)
    except (OSError, ValueError):  # a lock still being written: not the stale one
        moved = None
    if moved != holder:
        try:
            os.link(aside, path)  # back, unless yet another sweep has written one since
        except FileExistsError:
            pass
        except OSError:  # a filesystem without hard links
            os.replace(aside, path)
            return
    os.unlink(aside)


@contextlib.contextmanager
def _workdir_lock(workdir: str, process: int, say):
    """Holds `WORKDIR/sweep.lock` (with this process's pid, host and start time) while the sweep
    trains, and removes it on the way out, an error's or Ctrl-C's too. A lock held by a running
    sweep refuses this one in one line naming it; one whose sweep died without removing it (a
    kill -9, a SIGTERM outside a run's training loop) on this host is taken over, with a note.
    The file is created with O_EXCL, so two sweeps started at the same moment cannot both
    take it; a stale lock is removed only if it is still the one judged stale
    (`_remove_if_unchanged`), so of two sweeps that find the same stale lock at the same moment
    one takes it over and the other is refused."""
    path = os.path.join(workdir, LOCK_NAME if process == 0 else f"{LOCK_NAME}.{process}")
    mine = {"pid": os.getpid(), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    os.makedirs(workdir, exist_ok=True)
    taken_from = None  # the stale lock this sweep removed, if any
    while True:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            try:
                with open(path, encoding="utf-8") as f:
                    holder = json.load(f)
            except FileNotFoundError:  # released in between: try again
                continue
            except (OSError, ValueError):  # still being written, or damaged: it says no more
                holder = {}
            if not isinstance(holder, dict) or not _lock_is_stale(holder):
                holder = holder if isinstance(holder, dict) else {}
                raise RuntimeError(
                    f"sweep: another sweep is running in {workdir} ({_holder_text(holder)}; its "
                    f"lock is {path}). Wait for it to end, or use another workdir; if it is no "
                    f"longer running (its machine went away), delete {path}.")
            _remove_if_unchanged(path, holder)
            taken_from = holder
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(mine, f)
        break
    if taken_from is not None:  # said once the lock is this sweep's, not before a refusal
        say(f"[sweep] Note: taking over {path}, left by a sweep that is no longer running "
            f"({_holder_text(taken_from)}).", flush=True)
    try:
        yield path
    finally:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

def run(config_spec: str, workdir: str, grid: Sequence[str] = (), zipped: Sequence[str] = (),
        seeds: Sequence[int] = (0,), overrides: Sequence[str] = (),
        metrics: Sequence[str] = (), dry_run: bool = False) -> dict:
    """Trains every run of the sweep (skipping finished ones) and writes the tables and plots.

    Every run's config is built (and so checked: unknown keys, bad values) before the first
    one trains. Returns {"runs": [...], "settings": [...], "failed": [...]}."""
    import jax

    from tl_jax import parallel, static_train, train

    runs = plan(grid, zipped, seeds)
    # Each run's own setting is applied after the overrides: an override of a swept key (or
    # of the seed) would be dropped without a word.
    swept = {k for k, _ in runs[0].setting} | {"seed"}
    both = [o.partition("=")[0].strip() for o in overrides
            if o.partition("=")[0].strip() in swept]
    if both:
        raise config_lib.ConfigError(
            f"sweep: {', '.join('--config.' + k for k in both)} would be replaced by each run's "
            "own setting; "
            + ("give seeds with --seeds" if both == ["seed"] else
               "drop the override or the axis (a key is either swept or set for every run)"))
    configs = {}
    for r in runs:
        try:
            configs[r.name] = config_lib.load_config(config_spec, list(overrides) + r.overrides)
        except config_lib.ConfigError as e:
            raise config_lib.ConfigError(f"sweep run {r.name}: {e}") from e
    first = configs[runs[0].name]
    kind = config_lib.config_kind(first)
    saved_name = {"train": "config.json", "static": "static_config.json"}.get(kind)
    if kind is None:
        raise config_lib.ConfigError(f"sweep: {config_spec} is neither a `tl_jax train` config "
                                     "(task/train sections) nor a `tl_jax static` one")
    if kind == "static":
        # Like `tl_jax static`, a static sweep runs in one process: it starts no
        # jax.distributed, so on a multi-process launch every process took itself for process
        # 0, trained the same runs into the same folders and wrote the tables. Process 0 (by
        # TL_JAX_PROCESS_ID) does the work; the others say so and return an empty result.
        if not parallel.runs_on_this_process("sweep of a `tl_jax static` config"):
            return {"runs": [], "settings": [], "failed": []}
        # The settings `tl_jax static` checks before reading the corpus (sizes, save formats,
        # rates), so that a swept window=0 is refused now, not after the runs before it have
        # trained.
        for r in runs:
            try:
                static_train.check_config(configs[r.name])
            except ValueError as e:
                raise ValueError(f"sweep run {r.name}: {e}") from None
        # The scores a static run writes are known from its config (and whether its eval_dir
        # holds the files): a misspelt --metrics name is refused now, not once every run
        # has trained and no table was written.
        for r in runs:
            try:
                reported = static_train.score_names(configs[r.name])
            except ValueError as e:  # an eval_dir that is no folder, or holds some files only
                raise ValueError(f"sweep run {r.name}: {e}") from None
            unknown = [m for m in metrics if m not in reported]
            if unknown:
                why = ("" if not set(unknown) & set(static_train.EVAL_SCORES) else
                       " (the evaluation scores need config.eval_dir to hold the evaluation "
                       "files)")
                raise config_lib.ConfigError(
                    f"sweep: --metrics={','.join(unknown)}: run {r.name} would not report "
                    f"{'it' if len(unknown) == 1 else 'them'}{why}; it reports {reported}")
    if kind == "train":
        _check_train_metrics(metrics, runs, configs)
        # The mesh and the batch sizes against it, so that a swept batch size the devices do
        # not divide is refused now, not after the runs before it have trained. (This starts
        # jax.distributed, before which jax.process_index() must not be asked.)
        for r in runs:
            try:
                train.mesh_and_rules(configs[r.name])
                _check_train_settings(configs[r.name])
            except ValueError as e:
                raise ValueError(f"sweep run {r.name}: {e}") from None
    # The sweep's own messages (the plan, each run's line, failures, notes) are printed by
    # process 0 alone: every process of a train sweep trains its part of each run and returns
    # the same result, and each used to print every line once per process.
    lead = jax.process_index() == 0

    def say(*args, **kwargs):
        if lead:
            print(*args, **kwargs)

    if (kind == "train" and not first.train.eval_every
            and not _fills_schedule_from_epochs(first.to_dict())):
        say("[sweep] Note: train.eval_every=0, so runs report no held-out metrics; the "
            "tables will hold the last training loss only.", flush=True)
    _check_masking_cap(runs, configs)
    # One sweep at a time in a workdir: two at once trained the same runs twice, into the same
    # folders, and wrote the same tables. (A dry run writes nothing and may look on.)
    lock = (contextlib.nullcontext() if dry_run else
            _workdir_lock(workdir, jax.process_index(), say))
    with lock:
        _check_earlier_runs(workdir, runs, configs, saved_name,
                            defaults=config_lib.load_config(config_spec).to_dict())
        if kind == "train":
            past = [(r.name, reached) for r in runs
                    if int(configs[r.name].train.steps) > 0  # 0: filled from the epochs later
                    and (reached := _step_reached(os.path.join(workdir, "runs", r.name)))
                    is not None
                    and reached > int(configs[r.name].train.steps)]
            if past:
                raise config_lib.ConfigError("sweep: " + _past_steps_message(
                    past, int(configs[past[0][0]].train.steps)))
        seeds_said = f"{len(seeds)} seed{'s' if len(seeds) > 1 else ''}"
        say(f"[sweep] {len(runs)} runs ({len(runs) // len(seeds)} settings x {seeds_said}) "
            f"under {workdir}/runs", flush=True)
        if dry_run:
            for r in runs:
                say(f"  {r.name}: {' '.join('--config.' + o for o in r.overrides)}")
            return {"runs": [], "settings": [], "failed": []}
        os.makedirs(os.path.join(workdir, "runs"), exist_ok=True)
        records, failed = [], []
        for i, r in enumerate(runs, 1):
            run_dir = os.path.join(workdir, "runs", r.name)
            config = configs[r.name]
            if kind == "train":
                summary = _finished(run_dir, int(config.train.steps))
            else:
                summary = _static_scores(run_dir)
            if summary is not None and kind == "static":
                # A run trained while eval_dir lacked the files has scores.json without the
                # evaluation; now that the files are there its saved vectors are scored (no
                # training), or it would stay unscored in every table from now on.
                try:
                    scored = static_train.score_saved(config, run_dir, summary)
                except (ValueError, OSError) as e:
                    say(f"[sweep] {r.name} failed: {type(e).__name__}: {e}", flush=True)
                    failed.append({"run": r.name, "error": f"{type(e).__name__}: {e}"})
                    continue
                say(f"[sweep] {i}/{len(runs)} {r.name}: finished before, "
                    + ("skipped" if scored is summary else "scored its saved vectors"), flush=True)
                summary = scored
            elif summary is not None:
                say(f"[sweep] {i}/{len(runs)} {r.name}: finished before, skipped", flush=True)
            else:
                say(f"[sweep] {i}/{len(runs)} {r.name}", flush=True)
                try:
                    if kind == "train":
                        outcome = train.train_and_evaluate(config, run_dir)
                        summary, stopped_by = outcome.summary, outcome.stopped_by
                    else:
                        summary = static_train.run(config, run_dir)
                except Exception as e:  # noqa: BLE001 - one run's failure must not lose the others'
                    if not isinstance(e, (ValueError, RuntimeError, OSError, FloatingPointError)):
                        if lead:  # not an input error: a bug, shown in full
                            traceback.print_exc()
                    say(f"[sweep] {r.name} failed: {type(e).__name__}: {e}", flush=True)
                    failed.append({"run": r.name, "error": f"{type(e).__name__}: {e}"})
                    continue
                if kind == "train" and (summary.get("step") or 0) > int(config.train.steps):
                    # Only where train.steps was filled from the epochs (the data changed since):
                    # an explicit one was checked above.
                    error = _past_steps_message([(r.name, summary.get("step"))],
                                                int(config.train.steps))
                    say(f"[sweep] {r.name} failed: {error}", flush=True)
                    failed.append({"run": r.name, "error": error})
                    continue
                if kind == "train" and (summary.get("step") or 0) < int(config.train.steps):
                    # The trainer saved and returned early: SIGTERM (a preemption, a kill), or
                    # Ctrl-C on a run of several processes (`stopped_by` says which). The
                    # sweep stops too, rather than start the next run on a machine going away.
                    say(f"[sweep] {r.name} stopped at step {summary.get('step')} of "
                        f"{config.train.steps}; the sweep stops here. Run the same command "
                        "again to resume it.", flush=True)
                    return {"runs": records, "settings": [], "failed": failed, "stopped": r.name,
                            "stopped_by": stopped_by}
            if kind == "train":
                curves, last_loss = _curves(run_dir)
                values = {"step": summary.get("step"), "train/loss": last_loss,
                          **{k: v for k, v in summary.items() if k.startswith("eval/")}}
            else:
                curves = {}
                values = {"step": None, **{
                    k: v for k, v in summary.items()
                    if isinstance(v, (int, float)) and not isinstance(v, bool)}}
            records.append({"run": r.name, "setting": dict(r.setting), "seed": r.seed, **values,
                            "curves": curves})
        if kind == "static" and not metrics:
            metrics = [m for m in STATIC_METRICS if any(m in rec for rec in records)]
        result = summarize(records, runs, metrics)
        result["failed"] = failed
        # Every process of a train sweep gathers the same result from the shared run folders;
        # process 0 alone writes (and prints) the tables and plots, as it alone writes a run's
        # files: written by every process, the same files in one shared folder were raced on. (A
        # train sweep has started jax.distributed in mesh_and_rules above, even when every run
        # finished before; a static sweep gets here on process 0 alone.)
        if lead:
            write_outputs(workdir, result, runs)
        if failed:
            say(f"[sweep] {len(failed)} of {len(runs)} runs failed: "
                f"{', '.join(f['run'] for f in failed)}", flush=True)
        return result


def summarize(records: list[dict], runs: list[Run], metrics: Sequence[str] = ()) -> dict:
    """Groups the runs by setting: mean and population std over seeds of each metric.

    Only finite values enter them; `row["counts"][metric]` is how many seeds that was, where
    fewer than the setting's (a diverged or incomplete seed)."""
    if metrics:
        names = list(metrics)
        for name in names:
            if records and not any(name in rec for rec in records):
                have = sorted({k for rec in records for k, v in rec.items()
                               if isinstance(v, (int, float)) and k not in ("seed", "step")})
                raise ValueError(f"sweep: no run reports the metric {name!r}; they report {have}")
    else:
        evals = sorted({k for rec in records for k in rec if k.startswith("eval/")})
        names = evals + ["train/loss"]
    settings = []
    for setting in dict.fromkeys(r.setting for r in runs):
        group = [rec for rec in records if tuple(rec["setting"].items()) == setting]
        row = {"setting": dict(setting), "seeds": len(group)}
        for name in names:
            values = [rec[name] for rec in group
                      if isinstance(rec.get(name), (int, float)) and math.isfinite(rec[name])]
            if values:
                row[name] = _mean_std(values)
                if len(values) < len(group):
                    # A diverged seed (NaN/inf) or one without the metric is left out of the
                    # mean and std; the table says so rather than show a survivors' mean.
                    row.setdefault("counts", {})[name] = len(values)
        curves: dict[str, dict[int, list[float]]] = {}
        for rec in group:
            for key, points in rec["curves"].items():
                for step, value in points:
                    curves.setdefault(key, {}).setdefault(step, []).append(value)
        row["curves"] = {k: sorted((s, float(np.mean(v))) for s, v in c.items())
                         for k, c in curves.items()}
        settings.append(row)
    return {"runs": records, "settings": settings, "metrics": names}


def _fmt(mean_std, seeds: int, count: int | None = None) -> str:
    """`mean ± std` over the seeds; `count`: how many of them the figures cover, if fewer."""
    mean, std = mean_std
    n = seeds if count is None else count
    text = f"{mean:.4f}" if n < 2 else f"{mean:.4f} ± {std:.4f}"
    return text if count is None else f"{text} ({count} of {seeds} seeds)"


def markdown_table(result: dict) -> str:
    settings, names = result["settings"], result["metrics"]
    keys = list(settings[0]["setting"]) if settings else []
    lines = ["| " + " | ".join(keys + ["seeds"] + names) + " |",
             "|" + "---|" * len(keys) + "---:|" + "---:|" * len(names)]
    for row in settings:
        cells = [row["setting"][k] for k in keys] + [str(row["seeds"])]
        cells += [_fmt(row[n], row["seeds"], row.get("counts", {}).get(n)) if n in row else "-"
                  for n in names]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_outputs(workdir: str, result: dict, runs: list[Run]) -> None:
    names = result["metrics"]
    keys = list(runs[0].setting and dict(runs[0].setting))
    with open(os.path.join(workdir, "results.csv"), "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["run"] + keys + ["seed", "step"] + names)
        for rec in result["runs"]:
            writer.writerow([rec["run"]] + [rec["setting"][k] for k in keys]
                            + [rec["seed"], rec["step"]] + [rec.get(n, "") for n in names])
    table = markdown_table(result)
    with open(os.path.join(workdir, "results.md"), "w", encoding="utf-8") as f:
        f.write(table + "\n")
        if result.get("failed"):
            f.write("\nFailed runs:\n" + "".join(f"- {x['run']}: {x['error']}\n"
                                                  for x in result["failed"]))
    from tl_jax.metrics_writer import json_safe
    with open(os.path.join(workdir, "results.json"), "w", encoding="utf-8") as f:
        json.dump(json_safe({k: v for k, v in result.items()}), f, indent=1, allow_nan=False)
    print(table, flush=True)
    plots = plot(workdir, result, keys)
    print(f"[sweep] results.md, results.csv, results.json{''.join(', ' + p for p in plots)} "
          f"in {workdir}", flush=True)


def plot(workdir: str, result: dict, keys: list[str]) -> list[str]:
    """curves.png and (one numeric axis) final.png; nothing without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("[sweep] matplotlib is not installed (pip install -e '.[notebooks]'): tables only",
              flush=True)
        return []
    written = []
    settings = result["settings"]
    curve_names = sorted({k for row in settings for k in row["curves"]})
    if curve_names:
        fig, axes = plt.subplots(1, len(curve_names), figsize=(4.5 * len(curve_names), 3.5),
                                 squeeze=False)
        for ax, name in zip(axes[0], curve_names):
            for row in settings:
                points = row["curves"].get(name)
                if points:
                    label = ", ".join(f"{_short(k, keys)}={v}" for k, v in row["setting"].items())
                    label = label or f"mean of {row['seeds']} seeds"  # a sweep of seeds alone
                    ax.plot(*zip(*points), marker="o", markersize=3, label=label)
            ax.set_xlabel("step")
            ax.set_title(name)
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(workdir, "curves.png"), dpi=120)
        plt.close(fig)
        written.append("curves.png")
    numeric = [k for k in keys if all(_number(row["setting"][k]) is not None for row in settings)]
    names = [n for n in result["metrics"] if any(n in row for row in settings)]
    if len(keys) == 1 and numeric and names:
        key = numeric[0]
        fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.2), squeeze=False)
        for ax, name in zip(axes[0], names):
            rows = [row for row in settings if name in row]
            x = [_number(row["setting"][key]) for row in rows]
            ax.errorbar(x, [row[name][0] for row in rows], yerr=[row[name][1] for row in rows],
                        marker="o", capsize=3)
            ax.set_xlabel(key)
            ax.set_title(name)
        fig.tight_layout()
        fig.savefig(os.path.join(workdir, "final.png"), dpi=120)
        plt.close(fig)
        written.append("final.png")
    return written
