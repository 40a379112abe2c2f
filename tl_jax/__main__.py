"""`python -m tl_jax ...`: the same command line as `tl_jax ...`."""
from tl_jax.main import main

main()
