"""Metrics output: `WORKDIR/metrics.jsonl` (one object per logged step) and TensorBoard events."""
from __future__ import annotations

import json
import math
import os

import jax
import numpy as np


def _row_step(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def truncate_after(path: str, step: int) -> int:
    """Moves `path`'s rows logged after `step` to `<path minus .jsonl>.discarded.jsonl`.

    A run logs every `log_every` steps but saves every `checkpoint_every`, so the rows a run
    logged after its last checkpoint describe steps that the resumed run trains again; left in
    place, the file would hold two rows for each of those steps. A line cut short by a crash
    has no step and goes with them. Returns the number of rows moved for their step and of
    lines moved for having none (cut short, or not JSON).
    """
    if not os.path.exists(path):
        return 0, 0
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.read().splitlines(keepends=True)
    keep, drop, unreadable = [], [], 0
    for line in lines:
        if not line.strip():
            continue
        row_step = _row_step(line)
        unreadable += row_step is None
        (keep if row_step is not None and row_step <= step else drop).append(
            line if line.endswith("\n") else line + "\n")
    if drop:
        with open(path[:-len(".jsonl")] + ".discarded.jsonl", "a", encoding="utf-8") as f:
            f.writelines(drop)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(keep)
        os.replace(tmp, path)
    return len(drop) - unreadable, unreadable



def json_safe(obj):
    """`obj` with every NaN or infinite float as the string "nan" / "inf" / "-inf": strict JSON
    has no such numbers (Python would write bare NaN, which jq and JSON.parse reject)."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        return value if math.isfinite(value) else str(value)
    return obj

class MetricsWriter:
    """Writes scalars from process 0 only; other processes get a no-op writer.

    `start_step` is the step the run starts from (0, or the restored checkpoint's): rows and
    TensorBoard events a previous run logged after it are set aside, so each step has one row.
    """

    def __init__(self, workdir: str, enabled: bool | None = None, start_step: int | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._jsonl = None
        self._tb = None
        if self.enabled:
            os.makedirs(workdir, exist_ok=True)
            path = os.path.join(workdir, "metrics.jsonl")
            if start_step is not None:
                later, unreadable = truncate_after(path, start_step)
                moved = ([f"{later} row(s) of {path} logged after step {start_step} (past the "
                          "checkpoint this run starts from)"] if later else []) + (
                    [f"{unreadable} line(s) of {path if not later else 'it'} with no step "
                     "(cut short or not JSON)"] if unreadable else [])
                if moved:
                    print(f"[metrics] {' and '.join(moved)} moved to metrics.discarded.jsonl.",
                          flush=True)
            self._jsonl = open(path, "a", buffering=1)
            from tensorboardX import SummaryWriter  # imported lazily: only process 0 writes

            # purge_step makes TensorBoard drop the earlier events from that step on.
            purge = None if start_step is None else start_step + 1
            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=purge)

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        clean = {k: json_safe(float(v)) for k, v in scalars.items()}
        self._jsonl.write(json.dumps({"step": int(step), **clean}) + "\n")
        for k, v in scalars.items():
            # NaN is "nothing was measured" (an empty eval, precision with no positive
            # prediction): metrics.jsonl keeps it, TensorBoard gets no point rather than a
            # "NaN or Inf found" warning from tensorboardX per value. inf is still written.
            if not math.isnan(float(v)):
                self._tb.add_scalar(k, float(v), int(step))

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tb.close()
