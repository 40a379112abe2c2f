"""Host memory policy on CPU: keep freed memory in the process for the next step to reuse.

XLA:CPU allocates each run's temporary buffers (activations, gradients, logits: ~314 MiB for a
GPT-mini train step at batch 16 x 128) with `malloc` and frees them when the run ends. glibc
serves blocks that large with a fresh `mmap` and returns them with `munmap`, so every step
page-faults its whole working set back in, and the kernel zeroes each page first. Measured on
2 Zen 4 cores: ~88,000 page faults and ~160 ms of kernel time per GPT-mini step (~550 ms).

`keep_freed_memory()` does two things, before JAX creates its CPU client:

* glibc's main heap never `mmap`s a block and never gives its top back to the kernel
  (`mallopt`), so a freed block stays mapped and the next allocation reuses it, already
  faulted in;
* JAX runs single-device CPU computations in the calling thread instead of dispatching them
  to a worker (`jax_cpu_enable_async_dispatch=False`), so their buffers come from that main
  heap: glibc's other heaps (one per busy thread) cannot hold a block over 64 MiB and would
  `mmap` it anyway.

The same GPT-mini step: 0 faults, ~450 ms. The cost is that the process keeps its peak main
heap instead of returning it (it never uses more than the peak), and Python waits for each
CPU computation instead of queueing the next (a train step here takes far longer than
preparing its batch). Multi-threaded native code is not affected: each of its threads keeps
its own heap (routing every thread to the main heap instead made HF tokenizers ~3x slower).
Computations over several devices (a mesh, or the tests' 8 simulated CPU devices) are
dispatched as before and keep glibc's behaviour for their buffers.

`tl_jax/__init__.py` calls it on import, which is early enough if nothing has run JAX before.
`TL_JAX_KEEP_FREED_MEMORY=0` turns both off. Elsewhere than glibc (macOS, musl) the heap is
left alone and JAX's dispatch too.
"""
from __future__ import annotations

import ctypes
import importlib.abc
import importlib.util
import os
import sys

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4

_applied: bool | None = None


def _glibc():
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return None
    return libc


def keep_freed_memory() -> bool:
    """Applies the policy above once per process; True if it is in effect."""
    global _applied
    if _applied is not None:
        return _applied
    setting = os.environ.get("TL_JAX_KEEP_FREED_MEMORY", "1").strip().lower()
    if setting not in ("0", "1", "false", "true", "no", "yes", "off", "on"):
        raise ValueError(f"TL_JAX_KEEP_FREED_MEMORY={setting!r}: use 1 (keep freed memory, "
                         "the default) or 0 (glibc's own policy)")
    libc = _glibc() if setting in ("1", "true", "yes", "on") else None
    if libc is None:
        _applied = False
        return False
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    # Each call returns 1 on success. A trim threshold of -1 turns trimming off (mallopt(3); the
    # largest positive value, 2 GiB, still let a heap that had grown past it shrink and fault
    # back in).
    _applied = all(libc.mallopt(param, value) == 1
                   for param, value in ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1)))
    if _applied:
        if "jax" in sys.modules:
            _run_cpu_computations_inline(sys.modules["jax"])
        else:  # importing jax here would add ~1 s to `import tl_jax` (and to `tl_jax --help`)
            sys.meta_path.insert(0, _WhenJaxIsImported())
    return _applied


def _run_cpu_computations_inline(jax) -> None:
    jax.config.update("jax_cpu_enable_async_dispatch", False)


class _WhenJaxIsImported(importlib.abc.MetaPathFinder):
    """Finds `jax` the usual way and sets the dispatch option as soon as it has been imported."""

    def find_spec(self, name, path=None, target=None):
        if name != "jax":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec("jax")
        if spec is None or spec.loader is None:
            return spec
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            _run_cpu_computations_inline(module)

        spec.loader.exec_module = exec_module
        return spec
