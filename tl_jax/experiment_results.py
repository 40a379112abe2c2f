"""The results file of a script in experiments/: read it, refuse other settings, write it whole.

The scripts keep their finished runs' numbers in one JSON file in their workdir, with the settings
those runs were trained under. A rerun into the same workdir resumes: finished runs are reported
(or only evaluated) again, so a rerun with other settings would print the old numbers under the
new settings; `refuse_other_settings` stops it first. The file is written aside and renamed, so a
Ctrl-C in the middle of a write leaves the previous file whole.
"""
import json
import os


def read(path: str) -> dict:
    """The results saved at `path` ({} when there are none); a file that is not a JSON object
    (cut short by a crash of an older version, or edited by hand) is one line naming it."""
    if not os.path.exists(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            results = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SystemExit(f"{path} is not readable JSON ({e}); it may have been cut short. Move "
                         "it aside to start the table again, or use another --workdir") from None
    if not isinstance(results, dict):
        raise SystemExit(f"{path} holds a JSON {type(results).__name__}, not the object of "
                         "results this script writes; move it aside or use another --workdir")
    return results


def refuse_other_settings(path: str, saved: dict | None, current: dict) -> None:
    """Exits with one line naming every setting in `current` whose value differs from `saved`
    (the settings the runs in `path` were trained with). Keys missing from `saved` (a file from
    before they were recorded) are not compared."""
    if not saved:
        return
    changed = [f"--{k}={saved[k]} -> {v}" for k, v in current.items()
               if k in saved and saved[k] != v]
    if changed:
        raise SystemExit(f"{path} holds runs with other settings ({', '.join(changed)}); use "
                         "another --workdir, or the settings they were run with")


def write(path: str, results: dict) -> None:
    """Writes `results` to `path` through a temporary file and a rename: an interrupted write
    leaves the previous file as it was."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)
    os.replace(tmp, path)
