"""tl_jax keeps freed host memory for reuse: a large block freed and allocated again is not
faulted back in from the kernel (the per-step cost XLA:CPU's temporaries paid)."""
import os
import subprocess
import sys

import pytest

# Allocates 64 MiB with malloc, writes every byte and frees it, three times, and prints the
# page faults of the last two rounds. (Through malloc itself: numpy asks for huge pages.)
_PROBE = """
import ctypes, resource
import tl_jax
from tl_jax import host_memory
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
faults = []
for _ in range(3):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = libc.malloc(64 << 20)
    ctypes.memset(block, 1, 64 << 20)
    libc.free(block)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(host_memory.keep_freed_memory(), sum(faults[1:]))
"""


def _probe(setting):
    env = dict(os.environ, TL_JAX_KEEP_FREED_MEMORY=setting)
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True,
                         text=True, check=True).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc policy")
def test_a_freed_block_is_reused_without_page_faults_unless_turned_off():
    on, faults_on = _probe("1")
    off, faults_off = _probe("0")
    assert on and not off
    # 64 MiB is 16,384 pages of 4 KiB: glibc's default maps and unmaps it every round.
    assert faults_off > 2 * 10_000, faults_off
    assert faults_on < 1_000, faults_on


def test_a_bad_setting_is_an_error_that_names_the_variable():
    env = dict(os.environ, TL_JAX_KEEP_FREED_MEMORY="maybe")
    result = subprocess.run([sys.executable, "-c", "import tl_jax"], env=env,
                            capture_output=True, text=True)
    assert result.returncode != 0
    assert "TL_JAX_KEEP_FREED_MEMORY='maybe'" in result.stderr
