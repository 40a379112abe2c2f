"""Checkpoints: an orbax CheckpointManager around the whole train state.

A checkpoint holds everything needed to continue bit for bit: params, optimizer state, step and
PRNG key (item `state`), the data iterator's position (item `data`) and the config it was
written with (item `config`). Saves are asynchronous and atomic (orbax writes to a temporary
directory and renames it when complete), so a run killed mid-save leaves the previous
checkpoints intact. A checkpoint that fails to restore is moved aside (never deleted) and the
next older one is tried.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import warnings
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from tl_jax.metrics_writer import json_safe
from tl_jax.optim.optimizers import path_str
from tl_jax.progress import write as progress_write

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """No usable checkpoint, or one that does not fit the current config."""


def _is_tmp(name: str) -> bool:
    return "orbax-checkpoint-tmp" in name or name.endswith(".tmp")


def has_saved_step(workdir: str) -> bool:
    """Whether `workdir/checkpoints` holds a finished step, i.e. a run started there resumes.

    What a run saves beside its checkpoints (a tokenizer, a vocabulary) is reused only then: one
    left by a run that stopped before its first save must not override the current config.
    """
    directory = os.path.join(workdir, "checkpoints")
    return os.path.isdir(directory) and any(name.isdigit() for name in os.listdir(directory))


def resumes_with_tokenizer(workdir: str | None) -> bool:
    """Whether a run started in `workdir` resumes there with the vocabulary it saved: a finished
    step (`has_saved_step`) and `workdir/tokenizer/tokenizer.json` beside it. Such a run reads
    its vocabulary (and, where saved, its shape) from the workdir, not from its source."""
    return bool(workdir) and has_saved_step(workdir) and os.path.isfile(
        os.path.join(workdir, "tokenizer", "tokenizer.json"))


def _save_cpu_arrays_without_replica_slicing() -> None:
    """On a CPU backend, has orbax write each replicated array from one replica.

    orbax's default array handler splits the writing of a replicated array between its replicas
    ("replica-parallel"): each device saves a slice, cut out by a small program compiled per
    array shape and device. That spreads the copy-out over accelerators; CPU "devices" share one
    host memory, so on a multi-device CPU (the tests' 8 fake devices, a CPU host split for
    debugging) it only adds compiles (about 2 s at a process's first save of a tiny BERT) and
    copies (about 0.5 s a save). The files are the same either way. Accelerator backends keep
    orbax's default. Registered once per process, for jax.Array, in orbax's global registry.
    """
    global _CPU_HANDLER_REGISTERED
    if _CPU_HANDLER_REGISTERED or jax.default_backend() != "cpu":
        return
    ocp.type_handlers.register_type_handler(
        jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True)
    _CPU_HANDLER_REGISTERED = True


_CPU_HANDLER_REGISTERED = False


class Checkpointer:
    """Saves and restores train states in `directory` (normally `WORKDIR/checkpoints`).

    Args:
      directory: where checkpoints live; created if missing.
      keep: how many of the most recent checkpoints to keep.
      best_metric: a metric name (from eval) whose best checkpoint is also kept; "" for none.
      best_mode: "max" or "min" for `best_metric`.
      async_save: write in a background thread while training goes on.
    """

    def __init__(self, directory: str, keep: int = 3, best_metric: str = "",
                 best_mode: str = "max", async_save: bool = True):
        _save_cpu_arrays_without_replica_slicing()
        self.directory = os.path.abspath(directory)
        self.best_metric = best_metric
        damaged = self._drop_damaged_scores()  # before the manager reads them
        self._reset_damaged_step_metadata()
        policies: list = [pp.LatestN(n=keep)]
        tracking = {}
        if best_metric:
            # A checkpoint scored on another metric (train.best_metric changed on resume)
            # ranks last instead of failing the policy with a KeyError.
            worst = float("inf") if best_mode == "min" else float("-inf")
            score = lambda m: m.get(best_metric, worst)  # noqa: E731
            policies.append(pp.BestN(get_metric_fn=score, reverse=(best_mode == "min"), n=1,
                                     keep_checkpoints_without_metrics=False))
            # best_fn does not choose what is kept (the policies do); it makes orbax write each
            # save's metrics next to it and read them back, so a resumed run still knows which
            # kept checkpoint is the best. Without it the scores lived only in memory, and the
            # first save after a restart deleted the best checkpoint as one without metrics.
            tracking = dict(best_fn=score, best_mode=best_mode)
            self._score_unscored_checkpoints()
        for step, why in damaged.items():
            rescored = os.path.exists(os.path.join(self.directory, str(step), "metrics"))
            print(f"[checkpoint] The eval score saved with the checkpoint at step {step} "
                  f"({os.path.join(self.directory, str(step), 'metrics', 'metrics')}) {why}; "
                  "it was removed" + ("" if not best_metric else
                                      " and taken again from metrics.jsonl" if rescored else
                                      ": the checkpoint is kept while among the newest, not as "
                                      "the best") + ". The checkpoint itself is used as before.",
                  flush=True)
        options = ocp.CheckpointManagerOptions(
            preservation_policy=pp.AnyPreservationPolicy(policies),
            **tracking,
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=False,  # we report them first, see `report_incomplete`
            create=True,
        )
        self.incomplete = self._find_incomplete()
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "data", "config"),
        )

    def _score_unscored_checkpoints(self) -> None:
        """Gives the checkpoints of a workdir written before orbax kept their scores (tl_jax
        before 2026-12-03) the score of their eval from the workdir's metrics.jsonl, so that a
        resumed run does not delete its best checkpoint as one without a score. Written where
        orbax keeps a save's metrics (`STEP/metrics/metrics`), which the manager reads back."""
        if not os.path.isdir(self.directory):
            return
        unscored = [int(n) for n in os.listdir(self.directory) if n.isdigit()
                    and not os.path.exists(os.path.join(self.directory, n, "metrics"))]
        scores = eval_scores(os.path.dirname(self.directory), self.best_metric, unscored)
        for step, score in scores.items():
            folder = os.path.join(self.directory, str(step), "metrics")
            os.makedirs(folder, exist_ok=True)
            save_json(os.path.join(folder, "metrics"), {self.best_metric: score})

    def _drop_damaged_scores(self) -> dict[int, str]:
        """Removes the saved eval scores (`STEP/metrics/metrics`) that are not a JSON object (a
        file cut short by a full disk or an interrupted copy of the workdir): orbax reads every
        checkpoint's score when it opens the folder, and one such file made every start fail
        with a JSONDecodeError traceback. The score is only a copy of the eval row in
        metrics.jsonl (`_score_unscored_checkpoints` writes it again from there); the
        checkpoint's arrays are not in it. Returns `{step: what is wrong}`. With several
        processes nothing is removed: an error names the files (one process removing them
        while another reads them would race)."""
        damaged = _damaged_scores(self.directory)
        if damaged and jax.process_count() > 1:
            raise CheckpointError(
                "Unreadable eval scores beside checkpoints in " + self.directory + ": "
                + "; ".join(f"step {step}: {os.path.join(str(step), 'metrics', 'metrics')} {why}"
                            for step, why in damaged.items())
                + ". Delete those metrics/ folders (the scores are taken again from "
                "metrics.jsonl) and rerun the same command.")
        for step in damaged:
            shutil.rmtree(os.path.join(self.directory, str(step), "metrics"))
        return damaged

    def _reset_damaged_step_metadata(self) -> None:
        """A step's `_CHECKPOINT_METADATA` (orbax's timestamps and handler names for it) that
        is not a JSON object is replaced by an empty one, which orbax reads as it reads none:
        it logged two raw "ERROR absl: Failed to json parse Metadata file" lines for it on every
        start, though the step restores without it. One process only (several would race)."""
        if jax.process_count() > 1 or not os.path.isdir(self.directory):
            return
        for name in sorted(os.listdir(self.directory)):
            path = os.path.join(self.directory, name, "_CHECKPOINT_METADATA")
            if not name.isdigit() or not os.path.isfile(path):
                continue
            try:
                with open(path, encoding="utf-8") as f:
                    if isinstance(json.load(f), dict):
                        continue
            except (OSError, ValueError):
                pass
            with open(path, "w", encoding="utf-8") as f:
                f.write("{}")
            print(f"[checkpoint] {path} (orbax's timestamps for the step) did not read as JSON; "
                  "it was reset to {}. The checkpoint's arrays are not in it and are used as "
                  "before.", flush=True)

    # -- inspection ---------------------------------------------------------------------------

    def _find_incomplete(self) -> list[str]:
        if not os.path.isdir(self.directory):
            return []
        return sorted(n for n in os.listdir(self.directory) if _is_tmp(n))

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def report_incomplete(self) -> None:
        """Says which saves were interrupted, then removes their temporary directories."""
        for name in self.incomplete:
            path = os.path.join(self.directory, name)
            print(f"[checkpoint] Found an incomplete checkpoint {path} (a save that was "
                  "interrupted); it is ignored and removed. Earlier checkpoints are intact.",
                  flush=True)
            shutil.rmtree(path, ignore_errors=True)
        self.incomplete = []

    # -- save -------------------------------------------------------------------------------

    def save(self, step: int, state: Any, data_state: dict, config: dict,
             metrics: dict | None = None, force: bool = False) -> bool:
        if metrics is not None and self.best_metric and not _is_finite_number(
                metrics.get(self.best_metric)):
            # Missing, or NaN (an eval nothing counted towards, a diverged model): no score,
            # so this checkpoint is kept only while among the newest, never as the best.
            metrics = None
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(data_state),
            config=ocp.args.JsonSave(config),
        )
        if step in self.manager.all_steps():
            return False
        try:
            # Also waits for the previous asynchronous save, whose failure surfaces here.
            return self.manager.save(step, args=args, metrics=metrics, force=force)
        except Exception as e:  # noqa: BLE001 - a failed write: a full or read-only disk, ...
            raise self._write_failed(e) from e

    def wait(self) -> None:
        try:
            self.manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001
            raise self._write_failed(e) from e

    def close(self) -> None:
        self.wait()
        self.manager.close()

    def finish_after_interrupt(self) -> None:
        """After Ctrl-C: waits for a save still being written in the background, so that the
        interpreter does not shut down under it (that left it half-written, with pages of orbax
        tracebacks). Polled, not joined: a join that Ctrl-C interrupted (the save's wait for
        the previous one) leaves Python 3.11 taking the thread for finished (bpo-45274), and
        `wait` would return at once. A thread that never started (Ctrl-C within `save`) ends
        the wait too: `threading.enumerate` lists a thread until it has really finished."""
        import threading
        import time

        while self.manager.is_saving_in_progress() and any(
                t.name.startswith("save_finalize") for t in threading.enumerate()):
            time.sleep(0.05)
        self.wait()

    def _write_failed(self, error: Exception) -> CheckpointError:
        """A save that did not complete (no space left, a read-only or lost file system) is
        one line naming the directory and orbax's reason, not orbax's traceback from its
        background thread; the half-written temporary directory is reported and removed at the
        next start."""
        return CheckpointError(
            f"Writing a checkpoint to {self.directory} failed ({type(error).__name__}: "
            f"{_short(error)}). The checkpoints saved there before are intact: free some space "
            "(or fix the path) and run the same command again to resume from the newest.")

    # -- restore ------------------------------------------------------------------------------

    def read_config(self, step: int) -> dict:
        restored = self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
        return restored["config"]

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict, dict]:
        """Restores one step into the shardings of `abstract_state` (any mesh, any devices)."""
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            data=ocp.args.JsonRestore(),
            config=ocp.args.JsonRestore(),
        ))
        return restored["state"], restored["data"], restored["config"]

    def restore_latest_good(self, abstract_state: Any, check_config=None):
        """Restores the newest checkpoint that loads; moves broken ones aside.

        `check_config(saved_config: dict, step)` runs on each candidate's config before its
        arrays are read and may raise: a checkpoint of a different model is not corrupt, and
        must stay where it is.

        Returns `(state, data_state, config, step)` or `None` when there is no checkpoint.
        """
        self.report_incomplete()
        _drop_closed_loop_noise()
        for step in reversed(self.all_steps()):
            try:
                saved_config = self.read_config(step)
            except Exception as e:  # noqa: BLE001 - an unreadable config means a broken checkpoint
                self._report_broken(step, e)
                continue
            if check_config is not None:
                check_config(saved_config, step)
            self._check_shapes(step, abstract_state)
            try:
                state, data_state, config = self.restore(step, abstract_state)
                _check_finite_step(state, step)
                return state, data_state, config, step
            except Exception as e:  # noqa: BLE001 - any failure means this checkpoint is unusable
                if _out_of_resources(e):  # not the checkpoint's fault: it stays, the run stops
                    raise CheckpointError(
                        f"Restoring the checkpoint at step {step} in {self.directory} ran out of "
                        f"resources ({type(e).__name__}: {_short(e)}); the checkpoint is left "
                        "where it is. Free memory (or file handles) and rerun the same command "
                        "to resume.") from e
                self._report_broken(step, e)
        return None

    def _check_shapes(self, step: int, abstract_state: Any) -> None:
        """A checkpoint whose arrays have other shapes than this run's state belongs to another
        model (e.g. another number of labels): an error naming them, and the checkpoint stays
        where it is. Unreadable metadata is left for the restore to report as corruption."""
        try:
            reader = _read_only_manager_at(self.directory)
            try:
                stored = reader.item_metadata(step)["state"]
            finally:
                reader.close()
            flat, _ = jax.tree_util.tree_flatten_with_path(stored)
        except Exception:  # noqa: BLE001
            return
        if not flat:
            return  # no array metadata to compare: the restore says what is wrong
        stored = {_leaf_name(p): tuple(m.shape) for p, m in flat if hasattr(m, "shape")}
        wanted, _ = jax.tree_util.tree_flatten_with_path(abstract_state)
        wanted = {_leaf_name(p): tuple(leaf.shape) for p, leaf in wanted if hasattr(leaf, "shape")}
        differ = [f"{name}: checkpoint {stored[name]}, this run {shape}"
                  for name, shape in wanted.items() if name in stored and stored[name] != shape]
        only_saved, only_now = sorted(set(stored) - set(wanted)), sorted(set(wanted) - set(stored))
        if not differ and (only_saved or only_now):
            # Another tree: the restore would fail and the good checkpoint be moved aside as
            # corrupt. Most often the optimizer changed (optimizer.name, or clip_norm to or from
            # 0 adds or drops a state), or what trains (transfer rules).
            parts = sorted({n.split("/")[0] for n in only_saved + only_now})
            what = " and ".join({"opt_state": "optimizer state", "params": "parameters"}.get(
                p, p) for p in parts)
            raise CheckpointError(
                f"Checkpoint at step {step} in {self.directory} holds another {what} layout than "
                f"this run builds (only in the checkpoint: {some_names(only_saved)}; only in this "
                f"run: {some_names(only_now)}): was it trained with other optimizer.* settings "
                "(name, clip_norm) or transfer rules? Resume with the config it was "
                "trained with (its config.json), or use a new workdir with "
                "--config.init_from=<this workdir>; the checkpoint is left as it is.")
        if differ:
            raise CheckpointError(
                f"Checkpoint at step {step} in {self.directory} holds another model: "
                f"{'; '.join(differ[:5])}{' ...' if len(differ) > 5 else ''}. Use a new workdir "
                "or the config it was trained with; the checkpoint is left as it is.")

    def _report_broken(self, step: int, error: Exception) -> None:
        if jax.process_count() > 1:
            raise CheckpointError(f"Checkpoint at step {step} failed to restore: {error}") from error
        # orbax's reason for a missing state/_METADATA is "pytree structure error".
        problem = _metadata_problem(self.directory, step)
        reason = f"it {problem}" if problem else f"{type(error).__name__}: {_short(error)}"
        aside = self._move_aside(step)
        print(f"[checkpoint] Checkpoint at step {step} is corrupt or incomplete ({reason}). "
              f"Moved it to {aside}; falling back to the previous checkpoint.", flush=True)

    def _move_aside(self, step: int) -> str:
        src = os.path.join(self.directory, str(step))
        dst_root = self.directory + "_corrupt"
        os.makedirs(dst_root, exist_ok=True)
        dst = os.path.join(dst_root, str(step))
        suffix = 0
        while os.path.exists(dst):
            suffix += 1
            dst = os.path.join(dst_root, f"{step}.{suffix}")
        if os.path.exists(src):
            shutil.move(src, dst)
        # The manager caches its step list; rebuild it so the moved step is gone.
        self.manager.reload()
        return dst


def _damaged_scores(directory: str) -> dict[int, str]:
    """`{step: what is wrong}` for the checkpoints in `directory` whose saved eval score
    (`STEP/metrics/metrics`, JSON written by orbax) does not read as a JSON object."""
    damaged = {}
    if not os.path.isdir(directory):
        return damaged
    for name in sorted((n for n in os.listdir(directory) if n.isdigit()), key=int):
        path = os.path.join(directory, name, "metrics", "metrics")
        if not os.path.isfile(path):
            continue
        try:
            with open(path, encoding="utf-8") as f:
                score = json.load(f)
        except (OSError, ValueError) as e:
            damaged[int(name)] = f"is unreadable ({type(e).__name__}: {e})"
            continue
        if score is not None and not isinstance(score, dict):
            damaged[int(name)] = f"holds a JSON {type(score).__name__}, not the scores"
    return damaged


def _is_finite_number(value) -> bool:
    try:
        return not isinstance(value, (bool, str)) and np.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _leaf_name(path) -> str:
    """`path_str` of a state leaf, the same for the restore target and the checkpoint's stored
    metadata: a NamedTuple field (optax's states) is `.mu` in the first and `mu` in the second."""
    return "/".join(part.removeprefix(".") for part in path_str(path).split("/"))


def some_names(names: list[str], n: int = 3, none: str = "nothing") -> str:
    """The first `n` of `names` and how many more (`none` for an empty list): error messages
    name a few of a long list rather than all of it."""
    return (", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")
            if names else none)


def _out_of_resources(error: Exception) -> bool:
    """A restore that failed for want of host or device memory or file handles: the checkpoint
    may be sound, so it is not moved aside as corrupt (the run would restart from scratch)."""
    if isinstance(error, MemoryError):
        return True
    if isinstance(error, OSError) and error.errno in (errno.ENOMEM, errno.EMFILE, errno.ENFILE):
        return True
    text = str(error)
    return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


def _check_finite_step(state, step):
    got = int(np.asarray(jax.device_get(state["step"])))
    if got != step:
        raise CheckpointError(f"state.step is {got} but the checkpoint directory says {step}")


def abstract_with_shardings(abstract_tree, shardings):
    """ShapeDtypeStructs carrying target shardings: restore reshards onto them."""
    return jax.tree_util.tree_map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract_tree, shardings
    )


# Model fields that may change between a checkpoint and its resumption: they change how the
# weights are used, not their shapes.
RESUMABLE_MODEL_FIELDS = ("dropout_rate", "attention_dropout_rate", "dtype")


def config_differences(saved: dict, current: dict, sections=("model",)) -> list[str]:
    """Fields that differ between two config dicts in the given sections, as readable lines."""
    diffs = []
    for section in sections:
        a, b = saved.get(section), current.get(section)
        if isinstance(a, dict) and isinstance(b, dict):
            a = {k: v for k, v in a.items() if k not in RESUMABLE_MODEL_FIELDS}
            # A field added to the config after the checkpoint was written, left at its neutral
            # default (0, "", False, None), describes the same model.
            b = {k: v for k, v in b.items()
                 if k not in RESUMABLE_MODEL_FIELDS and (k in a or v not in (0, "", False, None))}
        diffs.extend(_diff(a, b, section))
    return diffs


def _diff(a, b, name):
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            out.extend(_diff(a.get(key), b.get(key), f"{name}.{key}"))
        return out
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        # JSON turns every tuple into a list, nested ones too (ELMo's filters ((1, 8), ...)).
        a, b = _lists(a), _lists(b)
    return [] if a == b else [f"{name}: checkpoint has {a!r}, config has {b!r}"]


def _lists(x):
    return [_lists(v) for v in x] if isinstance(x, (list, tuple)) else x


def merge_matching(params, source: dict[str, np.ndarray]):
    """Warm start: copies every source tensor whose `/`-path and shape match into `params`.

    Returns `(params, report)` where report lists `taken`, `shape_mismatch` (path, want, got),
    `not_in_checkpoint` (params left at their fresh init) and `unused` (source tensors no
    parameter matched).
    """
    taken, mismatch, fresh = [], [], []
    used = set()

    def pick(path, value):
        name = path_str(path)
        if name in source:
            src = np.asarray(source[name])
            used.add(name)
            if src.shape == tuple(value.shape):
                taken.append(name)
                return put_from_host(src.astype(value.dtype, copy=False), value.sharding)
            mismatch.append((name, tuple(value.shape), src.shape))
        else:
            fresh.append(name)
        return value

    params = jax.tree_util.tree_map_with_path(pick, params)
    report = dict(taken=taken, shape_mismatch=mismatch, not_in_checkpoint=fresh,
                  unused=sorted(set(source) - used))
    return params, report


def put_from_host(host: np.ndarray, sharding) -> jax.Array:
    """`host`, the same array on every process, as a jax.Array with `sharding`: each of this
    process's devices gets its own slice, straight from host memory.

    `jax.device_put` does that in one process; over several, it first all-gathers the whole
    array to check that every process passed the same value, so every device held the whole
    tensor once per process and a model that only fits sharded could not be warm-started. A
    warm start reads the same checkpoint on every process, so there is nothing to check."""
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


class _DropOrbaxNoise(logging.Filter):
    """Orbax warnings that are noise here, not warnings to the user: "Given directory is
    read only", logged whenever a manager is opened read-only (how every reader of a finished
    workdir opens it: generate, convert, extract, init_from), and "Item ... was found in the
    checkpoint, but could not be restored", logged for each item a read leaves out on purpose
    (the config before the arrays on every resume, the params without the optimizer state),
    and the note that a type handler was replaced (our own, see
    `_save_cpu_arrays_without_replica_slicing`). Also the traceback orbax logs when Ctrl-C
    lands in its wait for a save: `tl_jax` reports the interrupt in one line. And "Requested
    `tracked_metric`; did not provide metrics", logged for each save between evals (a SIGTERM's,
    or `checkpoint_every` off the `eval_every` grid): such a checkpoint has no score on purpose
    (`train_and_evaluate`'s `save`).

    A save that fails in orbax's background threads (a full disk, a file size limit) is logged
    by three of them and by the wait for it, each with the same traceback (~330 lines for one
    failure). It is shown once, on one line, as it happens; the run raises it at its next save
    (`Checkpointer._write_failed`)."""

    # The records of one failed background save, each with the failure as `exc_info`.
    FAILED_SAVE = ("_SignalingThread.run() raised an exception", "Handler Commit operations",
                   "Save Finalize thread (save_finalize) failed")

    def __init__(self):
        super().__init__()
        self.failed_saves_shown: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt):
            return False
        message = str(record.msg)
        if record.exc_info and any(m in record.getMessage() for m in self.FAILED_SAVE):
            reason = _short(record.exc_info[1])
            if reason not in self.failed_saves_shown:
                self.failed_saves_shown.add(reason)
                # Above the training bar, on a line of its own: a print from orbax's thread
                # landed on the end of the bar's line, wherever the cursor was.
                progress_write(f"[checkpoint] A checkpoint save failed in the background "
                               f"({type(record.exc_info[1]).__name__}: {reason}). The run stops "
                               "with this error at its next save (or at its end); the "
                               "checkpoints saved before are intact.")
            return False
        return not (message.startswith("Given directory is read only")
                    or "was found in the checkpoint, but could not be restored" in message
                    or message.startswith("Type handler registry type")
                    or message.startswith("Requested `tracked_metric`; did not provide metrics"))


logging.getLogger("absl").addFilter(_DropOrbaxNoise())


def _read_only_manager(workdir: str, state_handler=None) -> tuple[ocp.CheckpointManager, str]:
    directory = os.path.abspath(os.path.join(workdir, "checkpoints"))  # orbax needs absolute
    if not os.path.isdir(directory):
        raise CheckpointError(f"{workdir} has no checkpoints/ directory: not a tl_jax workdir.")
    return _read_only_manager_at(directory, state_handler), directory


def _read_only_manager_at(directory: str, state_handler=None) -> ocp.CheckpointManager:
    """A manager that only reads the checkpoints in `directory`, with a handler for each item
    (so `item_metadata` describes the state's arrays, which a writing manager leaves as None
    until it has saved or restored)."""
    # lightweight_initialize: orbax does not read each checkpoint's saved eval score and commit
    # time, which a reader never uses (`best_step` takes the scores from metrics.jsonl); a
    # damaged score file (see `Checkpointer._drop_damaged_scores`) failed every predict,
    # init_from, convert and extract of the workdir with a JSONDecodeError traceback.
    return ocp.CheckpointManager(
        directory, options=ocp.CheckpointManagerOptions(
            read_only=True, create=False, save_interval_steps=0, lightweight_initialize=True),
        item_handlers={"state": state_handler or ocp.StandardCheckpointHandler(),
                       "data": ocp.JsonCheckpointHandler(),
                       "config": ocp.JsonCheckpointHandler()})


def _short(error: Exception) -> str:
    """An orbax/tensorstore error's first line, without the kilobyte-long tensorstore spec.

    orbax wraps a failed array read in "Encountered error while reading array index: ... See
    full TensorStore details: <bound method ... spec of TensorStore({": that part is cut, and
    the error it wraps (which names the file and what is wrong with it) is added."""
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    # `[tensorstore_spec=...]`, or `[tensorstore_spec[1]=...]` when the failed read opened
    # a second store (a truncated manifest.ocdbt).
    text = re.split(r" \[tensorstore_spec[\[=]", text)[0]
    if " See full TensorStore details" in text:
        text = text.split(" See full TensorStore details")[0]
        if error.__cause__ is not None:
            text += " " + _short(error.__cause__)
    return text


def _metadata_problem(directory: str, step: int) -> str | None:
    """What is wrong with the metadata file of checkpoint `step`'s state, `state/_METADATA`
    (orbax's index of the arrays, JSON): missing, or not JSON; None when it reads. orbax says
    neither: a missing one is metadata None (so "'NoneType' object is not subscriptable" where
    it is used, or "pytree structure error" in a restore), a damaged one "Expecting value"."""
    state = os.path.join(directory, str(step), "state")
    path = os.path.join(state, "_METADATA")
    if not os.path.isdir(state):
        return "has no state/ directory"
    if not os.path.isfile(path):
        return "is missing state/_METADATA, orbax's index of its arrays"
    try:
        with open(path, encoding="utf-8") as f:
            json.load(f)
    except (OSError, ValueError) as e:
        return f"has an unreadable state/_METADATA ({type(e).__name__}: {e})"
    return None


def _state_metadata(directory: str, step: int):
    """The metadata tree of checkpoint `step`'s state (shapes and dtypes; no array is read), or
    a `CheckpointError` naming the checkpoint and its broken `state/_METADATA`.

    Read by the state's handler from its folder: `mgr.item_metadata` also reads the step's
    saved eval score, and a damaged one (`Checkpointer._drop_damaged_scores`) made a sound
    checkpoint unreadable here."""
    from etils import epath
    try:
        metadata = ocp.StandardCheckpointHandler().metadata(
            epath.Path(directory) / str(step) / "state")
    except Exception as e:  # noqa: BLE001 - orbax raises what its JSON reader raised
        problem = _metadata_problem(directory, step)
        if problem is None:
            raise
        raise CheckpointError(_unreadable(directory, step, problem)) from e
    if metadata is None:
        problem = _metadata_problem(directory, step) or "has no metadata of its state"
        raise CheckpointError(_unreadable(directory, step, problem))
    return metadata


def _unreadable(directory: str, step: int, problem: str) -> str:
    return (f"Checkpoint at step {step} in {directory} {problem}: it cannot be read (copied or "
            "written in part?)")


# orbax's coroutine that reads one array's slice; when a restore fails, the reads of the other
# arrays that also fail are left in this coroutine, never awaited.
_ORBAX_ARRAY_READ = "_read_array_index_and_device_put"


def _drop_failed_array_reads(record: logging.LogRecord) -> bool:
    """A `logging` filter: False for asyncio's "exception was never retrieved" records of orbax's
    failed array reads (see `_drop_closed_loop_noise`)."""
    error = record.exc_info[1] if record.exc_info else None
    return not (error is not None and "never retrieved" in str(record.msg)
                and str(error).startswith("Encountered error while reading array index"))


def _drop_closed_loop_noise() -> None:
    """Once a restore has failed, tensorstore's reads that were still in flight complete into
    orbax's closed asyncio loop, and each prints an "Event loop is closed" traceback (hundreds
    of lines, during and after the restore) through `sys.unraisablehook`; when many arrays are
    damaged, each other failed read also prints its own "Exception ignored in: <coroutine object
    _read_array_index_and_device_put>" with tensorstore's whole spec (~60 lines each, thousands
    in all), and asyncio and `warnings` add one more line per unretrieved or unstarted read. The
    failure itself is reported on one line by the caller; this drops exactly those, and passes
    every other unraisable to the hook that was installed before."""
    import sys

    previous = sys.unraisablehook
    if getattr(previous, "_tl_jax_closed_loop_filter", False):
        return

    def hook(unraisable):
        value = unraisable.exc_value
        if isinstance(value, RuntimeError) and str(value) == "Event loop is closed":
            return
        code = getattr(getattr(unraisable, "object", None), "cr_code", None)
        if code is not None and code.co_name == _ORBAX_ARRAY_READ:
            return
        previous(unraisable)

    # The futures gathering those reads end with the same errors, which asyncio logs as
    # "_GatheringFuture exception was never retrieved" when they are collected.
    logging.getLogger("asyncio").addFilter(_drop_failed_array_reads)
    # And the reads never started print "coroutine ... was never awaited" when collected.
    warnings.filterwarnings("ignore", message=f"coroutine '{_ORBAX_ARRAY_READ}' was never awaited",
                            category=RuntimeWarning)

    hook._tl_jax_closed_loop_filter = True
    sys.unraisablehook = hook


def param_shapes_from_workdir(workdir: str) -> tuple[dict[str, tuple[int, ...]], int]:
    """`/`-path -> shape of the params of the newest readable checkpoint (no array is read):
    the architecture a run actually trained, whatever its config's size names."""
    mgr, directory = _read_only_manager(workdir)
    steps = sorted(mgr.all_steps(), reverse=True)
    found = _newest_that_reads(
        directory, steps, lambda step: _state_metadata(directory, step)["params"],
        "has unreadable metadata")
    if found is None:
        raise CheckpointError(f"No readable checkpoint in {directory}.")
    metadata, step = found
    flat, _ = jax.tree_util.tree_flatten_with_path(metadata)
    return {path_str(p): tuple(m.shape) for p, m in flat}, step


def _newest_that_reads(directory: str, steps: list[int], read, failure: str):
    """`(read(step), step)` for the first of `steps` (newest first) that `read` reads, or None.

    A checkpoint that does not read is reported on one line and the next older one is tried:
    a `CheckpointError` (a broken state/_METADATA, `_state_metadata`) said in full, any other
    error as "`directory/step` `failure` (its reason)". With a single step, a `CheckpointError`
    is raised instead. The checkpoints are not modified."""
    for step in steps:
        try:
            return read(step), step
        except CheckpointError as e:  # a broken state/_METADATA, said in full
            if len(steps) == 1:
                raise
            print(f"[checkpoint] {e}; trying older.")
        except Exception as e:  # noqa: BLE001
            print(f"[checkpoint] {directory}/{step} {failure} ({_short(e)}); trying older.")
    return None


def load_params_from_workdir(workdir: str, only: tuple[str, ...] | None = None,
                             step: int | None = None) -> tuple[dict[str, np.ndarray], int]:
    """Reads the params of the latest good checkpoint in a tl_jax workdir, as flat numpy.

    With `step`, that checkpoint only: one that does not restore is an error, not a fallback.

    Only the params are restored (a partial restore): the optimizer state, twice their size
    with Adam, is not loaded; with `only` (top-level names such as `("bert", "mlm_head")`),
    neither are the params outside those subtrees (a distillation run's teacher). A checkpoint
    that does not restore is reported on one line and the next older one is tried; the workdir
    is not modified.
    """
    mgr, directory = _read_only_manager(workdir, ocp.PyTreeCheckpointHandler())
    _drop_closed_loop_noise()
    steps = sorted(mgr.all_steps(), reverse=True) if step is None else [step]

    def read(step):
        metadata = _state_metadata(directory, step)["params"]
        if only is not None:
            metadata = {k: v for k, v in metadata.items() if k in only}
        # Straight into host numpy, whatever mesh wrote it (8 devices, 2 processes, ...): orbax's
        # numpy handler reads each array whole from its files, with the dtype it was saved in,
        # and no device holds any of it. (Read as jax.Arrays, they all had to fit on one device
        # first, so a model that only fits sharded could not be warm-started, predicted or be
        # a teacher.) Callers place what they take on their own shardings.
        target = {"params": jax.tree_util.tree_map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), metadata)}
        restore_args = jax.tree_util.tree_map(
            lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
        return mgr.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
            item=target, restore_args=restore_args, partial_restore=True)))

    found = _newest_that_reads(directory, steps, read, "does not restore")
    if found is None:
        raise CheckpointError(f"No restorable checkpoint in {directory}"
                              + (f" at step {steps[0]}." if len(steps) == 1 else "."))
    restored, step = found
    flat, _ = jax.tree_util.tree_flatten_with_path(restored["state"]["params"])
    return {path_str(p): np.asarray(v) for p, v in flat}, step


def saved_steps(workdir: str) -> list[int]:
    """The finished checkpoint steps of a workdir, oldest first (none: a CheckpointError)."""
    mgr, directory = _read_only_manager(workdir)
    steps = sorted(mgr.all_steps())
    if not steps:
        raise CheckpointError(f"{workdir} has no checkpoint in {directory} (did its training "
                              "run save one?).")
    return steps


def eval_scores(workdir: str, metric: str, steps) -> dict[int, float]:
    """`{step: value}` of `metric` in the eval rows of the workdir's metrics.jsonl, for `steps`
    (a resumed run drops the rows logged after its checkpoint, so they describe the weights the
    checkpoints hold)."""
    scores, steps = {}, set(steps)
    path = os.path.join(workdir, "metrics.jsonl")
    if not steps or not os.path.isfile(path):
        return scores
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash: that eval is lost, not the others
            if (isinstance(row, dict) and row.get("step") in steps
                    and isinstance(row.get(metric), (int, float))):
                scores[row["step"]] = float(row[metric])
    return scores


def best_step(workdir: str, best_metric: str, best_mode: str = "max") -> tuple[int, str]:
    """The checkpoint to use a finished run with: the best one it kept, else the newest.

    The trainer keeps the checkpoint with the best `train.best_metric` besides the newest ones.
    The scores come from the eval rows of the workdir's metrics.jsonl (`eval_scores`), which
    workdirs of every tl_jax version have (orbax keeps them beside the checkpoints only since
    2026-12-03). Among equal scores the newest wins. Returns the step and a line saying why it
    was chosen.
    """
    steps = saved_steps(workdir)
    newest = steps[-1]
    if not best_metric:
        return newest, "the newest checkpoint (the run kept no best: train.best_metric is empty)"
    scores = eval_scores(workdir, best_metric, steps)
    if not scores:
        return newest, (f"the newest checkpoint (no kept checkpoint has an eval {best_metric} "
                        "in metrics.jsonl)")
    sign = -1.0 if best_mode == "min" else 1.0
    best = max(scores, key=lambda s: (sign * scores[s], s))
    # As precise as the run's [eval] lines (`train.py`) and predict's metrics print it: with
    # ".4g" a score of 30.7029 read "30.7", and two close checkpoints looked tied.
    why = f"the best kept checkpoint by {best_metric} ({best_mode}: {scores[best]:.4f})"
    if best != newest:
        why += f"; the newest is step {newest}"
    return best, why


def config_from_workdir(workdir: str, step: int) -> dict:
    """The config checkpoint `step` of a workdir was written with, including `resolved_model`
    (the model shape the run actually built: vocabulary from the tokenizer, a distillation
    student's depth, ...)."""
    mgr, directory = _read_only_manager(workdir)
    try:
        return mgr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
    except Exception as e:  # noqa: BLE001 - orbax raises what its JSON reader raised
        # A damaged config/metadata was a JSONDecodeError traceback in predict and fill_mask.
        raise CheckpointError(_unreadable(
            directory, step, f"has an unreadable config/metadata, the config it was saved with "
            f"({type(e).__name__}: {_short(e)})")) from e


# What a BERT workdir's param shapes cannot tell: LoRA's scale (lora_alpha / lora_rank), the
# activation, the LayerNorm epsilon. Read from the model the run built (its `resolved_model`).
UNSHAPED_MODEL_FIELDS = ("lora_alpha", "hidden_act", "layer_norm_eps")


def unshaped_model_fields(workdir: str, step: int) -> dict:
    """The `UNSHAPED_MODEL_FIELDS` of the model checkpoint `step` of `workdir` was trained as
    (its config's `resolved_model`); empty for a checkpoint saved without one. Left to their
    defaults, a LoRA run's lora_alpha (16 in configs/transfer_lora.py) became 1: `tl_jax
    extract`, a fine-tuning run started from it and its HF export computed another function
    than the one it trained."""
    try:
        resolved = config_from_workdir(workdir, step).get("resolved_model") or {}
    except Exception:  # noqa: BLE001 - a checkpoint without a readable config: the shapes alone
        return {}
    return {k: resolved[k] for k in UNSHAPED_MODEL_FIELDS if k in resolved}


RUN_CONFIG = "it is the run's config, written by `tl_jax train`"


def load_json(path: str, what: str = ""):
    """The JSON in `path` (a file tl_jax wrote, or a config.json); a file that is not JSON is a
    one-line `ValueError` naming the file, the line and, when given, `what` the file is."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: invalid JSON ({e.msg})"
                         + (f"; {what}" if what else "")) from e


def load_run_config(directory: str) -> dict:
    """The config.json `tl_jax train` wrote in a workdir; a one-line `ValueError` when it is
    not JSON (file and line) or not a JSON object."""
    path = os.path.join(directory, "config.json")
    config = load_json(path, RUN_CONFIG)
    if not isinstance(config, dict):
        raise ValueError(f"{path} holds a JSON {type(config).__name__}, not the run's config (an "
                         "object, written by `tl_jax train`)")
    return config


def save_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(json_safe(obj), f, indent=2, sort_keys=True, default=str, allow_nan=False)
    os.replace(tmp, path)
