"""Paths a user writes in a config value: `$VAR` and `~` expanded.

The shell expands neither after `--config.init_from=`, and configs name the shared data as
`$TL_JAX_DATA_DIR/...`; every path read from a config goes through `expand` so that `~/runs/x`
and `$HOME/runs/x` mean what they mean on the command line. An unset variable is left as
written, so the "not found" error shows it.
"""
import os


def expand(path: str) -> str:
    """`path` with environment variables and a leading `~` expanded ("" stays "")."""
    return os.path.expanduser(os.path.expandvars(path or ""))
