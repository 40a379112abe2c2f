"""tl_jax: transfer learning for NLP in JAX/Flax."""

from tl_jax import host_memory as _host_memory

__version__ = "0.1.0"

# Before JAX starts its threads: freed host memory stays in the process for the next step
# (see tl_jax/host_memory.py; TL_JAX_KEEP_FREED_MEMORY=0 turns it off).
_host_memory.keep_freed_memory()
