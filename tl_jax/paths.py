"""Files and folders: the paths a user writes in config values (`expand`), and writing a file
whole or not at all (`atomic_open`).

Paths a user writes in a config value: `$VAR` and `~` expanded.

The shell expands neither after `--config.init_from=`, and configs name the shared data as
`$TL_JAX_DATA_DIR/...`; every path read from a config goes through `expand` so that `~/runs/x`
and `$HOME/runs/x` mean what they mean on the command line. An unset variable is left as
written, so the "not found" error shows it.
"""
import contextlib
import os


def expand(path: str) -> str:
    """`path` with environment variables and a leading `~` expanded ("" stays "")."""
    return os.path.expanduser(os.path.expandvars(path or ""))


@contextlib.contextmanager
def atomic_open(path, mode: str, **kwargs):
    """Writes to a temporary file beside `path`, renamed over it only once complete: a write
    cut short (an error, Ctrl-C) neither leaves a truncated file nor destroys the old one."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):  # else the error names the temporary file
        raise FileNotFoundError(f"cannot write {path}: its folder {folder} does not exist")
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, mode, **kwargs) as f:
            yield f
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
