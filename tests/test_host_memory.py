"""tl_jax keeps freed host memory for reuse: XLA:CPU's temporaries, freed after every call, are
not faulted back in from the kernel on the next (a per-step cost of every CPU train step)."""
import os
import platform
import subprocess
import sys

import pytest

# Runs a jitted function whose 32 MiB temporary (a matmul's output) XLA:CPU allocates and frees
# on every call, and prints the median page faults of the last 8 of 24 calls. With the policy
# each thread's heap grows to its steady size the first time it holds the temporary: within 3
# calls on an idle machine, within 7 with two busy processes beside it (other threads take
# calls then). The temporary was 64 MiB: a thread's own heap (glibc: 64 MiB at most) cannot
# hold that, so a call that ran on such a thread mapped it afresh, and under CI's load one of
# the last 5 of 12 calls now and then did (median 16,391 faults once).
_PROBE = """
import resource
{imports}
import jax.numpy as jnp
from tl_jax import host_memory

@jax.jit
def f(x, w):
    y = x @ w  # (8192, 1024) float32: 32 MiB
    return jnp.tanh(y).sum(0) + y.max(0)

x, w = jnp.ones((8192, 64)) * 1e-3, jnp.ones((64, 1024))
faults = []
for _ in range(24):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x, w).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(host_memory.keep_freed_memory(), sorted(faults[-8:])[4])
"""


def _probe(setting, imports):
    env = dict(os.environ, TL_JAX_KEEP_FREED_MEMORY=setting)
    code = _PROBE.format(imports=imports)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True).stdout.split()
    return out[0] == "True", int(out[1])


# tl_jax imported first (jax's option is set when jax is imported), or after jax (set at once).
@pytest.mark.parametrize("imports", ["import tl_jax; import jax", "import jax; import tl_jax"])
def test_xla_temporaries_are_reused_without_page_faults_unless_turned_off(imports):
    on, faults_on = _probe("1", imports)
    off, faults_off = _probe("0", imports)
    if platform.libc_ver()[0] != "glibc":  # macOS, musl: the policy is glibc's, nothing is set
        assert not on and not off
        return
    assert on and not off
    # 32 MiB is 8,192 pages of 4 KiB: under glibc's own policy they are mapped and faulted in
    # again on every call.
    assert faults_off > 5_000, faults_off
    assert faults_on < 1_000, faults_on


def test_a_bad_setting_is_an_error_that_names_the_variable():
    env = dict(os.environ, TL_JAX_KEEP_FREED_MEMORY="maybe")
    result = subprocess.run([sys.executable, "-c", "import tl_jax"], env=env,
                            capture_output=True, text=True)
    assert result.returncode != 0
    assert "TL_JAX_KEEP_FREED_MEMORY='maybe'" in result.stderr
