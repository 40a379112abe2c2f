"""Loading experiment configs: `configs/NAME.py:ARG` plus dotted `key=value` overrides.

A config file defines `get_config(arg) -> ml_collections.ConfigDict`. The loaded config is
locked, so a misspelt key is an error that lists the valid keys instead of a value silently
ignored. Override values are parsed as Python literals and must keep the field's type.
"""
from __future__ import annotations

import ast
import importlib.util
import os
import pathlib
import traceback
from typing import Iterable

import ml_collections


class ConfigError(ValueError):
    """A config file or override is invalid."""


def _load_module(path: str):
    if not os.path.exists(path):
        raise ConfigError(f"Config file not found: {path}")
    module_name = "tl_jax_config_" + pathlib.Path(path).stem
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or os.path.isdir(path):
        # A folder (--config=configs) or a file importlib cannot load (no .py): it failed
        # with an AttributeError from importlib.
        raise ConfigError(f"Config {path} is not a Python file; expected configs/NAME.py[:ARG].")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"Config file {path} defines no get_config(arg) function.")
    return module


def _resolve_path(path: str) -> str:
    """Finds a config given as a path, or as `configs/...` relative to the repository or to the
    installed package."""
    if os.path.exists(path):
        return path
    repo_root = pathlib.Path(__file__).resolve().parent.parent
    candidate = repo_root / path
    if candidate.exists():
        return str(candidate)
    candidate = repo_root / "configs" / path
    if candidate.exists():
        return str(candidate)
    # A non-editable install (a wheel, `pip install git+...`) ships configs/ as tl_jax/configs.
    installed = pathlib.Path(__file__).resolve().parent / "configs"
    name = path.removeprefix("configs/")
    if (installed / name).exists():
        return str(installed / name)
    return path


def raised_in(error: BaseException, folder: str) -> bool:
    """Whether `error` was raised by a `raise` in a file under `folder` (its innermost frame):
    a deliberate check with a message for the user, not a failure inside a library."""
    frames = traceback.extract_tb(error.__traceback__)
    prefix = os.path.abspath(folder) + os.sep
    return bool(frames) and os.path.abspath(frames[-1].filename).startswith(prefix)


def load_config(spec: str, overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
    """Loads `path.py[:arg]` and applies `key.sub=value` overrides.

    Example: `load_config("configs/bert_pretrain.py:tiny", ["train.steps=20"])`.
    `overrides` is a list of such strings (a string alone is refused).
    """
    if isinstance(overrides, str):
        # Read one character at a time, it failed as "Override 't' must look like key=value."
        raise ConfigError(f"overrides={overrides[:60]!r} is a string; give a list of key=value "
                          f"strings ([{overrides[:60]!r}])")
    path, _, arg = spec.partition(":")
    resolved = _resolve_path(path)
    module = _load_module(resolved)
    try:
        config = module.get_config(arg or None) if arg else module.get_config(None)
    except ValueError as e:
        # A `raise` in a config file (or one it loads from its folder) is that config's own
        # check of its argument: a ConfigError, reported in one line. Others keep their type.
        if raised_in(e, os.path.dirname(resolved)):
            raise ConfigError(f"{spec}: {e}") from e
        raise
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"get_config in {path} must return an ml_collections.ConfigDict.")
    config = ml_collections.ConfigDict(config)  # a copy we may lock and change
    config.lock()
    for override in overrides:
        apply_override(config, override)
    return config


def parse_value(text: str):
    """Parses an override value as a Python literal, falling back to the raw string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _leaf_paths(node: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    """Every dotted key of `node` that holds a value (not a section)."""
    paths = []
    for name in node.keys():
        path = f"{prefix}{name}"
        value = node[name]
        paths += (_leaf_paths(value, path + ".") if isinstance(value, ml_collections.ConfigDict)
                  else [path])
    return paths


def _did_you_mean(config: ml_collections.ConfigDict, parts: list[str], depth: int) -> str:
    """" Did you mean 'a.b'?" for an unknown key `parts` (unknown from `parts[depth]` on): keys
    of the same section spelt alike ("max_seq_len" -> "max_seq_length"), or whose words start
    with its letters ("lr" -> "learning_rate"), and a field of that name in another section
    ("train.batch_size" -> "data.batch_size"); "" when there is none."""
    import difflib

    node = config
    for part in parts[:depth]:
        node = node[part]
    part, before, after = parts[depth], parts[:depth], parts[depth + 1:]
    names = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
    close = difflib.get_close_matches(part, names, n=3, cutoff=0.75)
    close += [n for n in names if n not in close and "_" in n
              and "".join(w[:1] for w in n.split("_")) == part]
    guesses = [".".join(before + [name] + after) for name in close]
    if not after:  # a field put in the wrong section, spelt right or by its initials
        guesses += [path for path in _leaf_paths(config) if path not in guesses and (
            path.rsplit(".", 1)[-1] == part
            or "".join(w[:1] for w in path.rsplit(".", 1)[-1].split("_")) == part != "")]
    if not guesses:
        return ""
    return " Did you mean " + " or ".join(repr(g) for g in guesses[:4]) + "?"


def config_kind(config) -> str | None:
    """Which command runs a loaded config: "train" (task and train sections), "static" (method
    and save_formats: word2vec/GloVe), or None for neither."""
    if "task" in config and "train" in config:
        return "train"
    if "method" in config and "save_formats" in config:
        return "static"
    return None


def apply_override(config: ml_collections.ConfigDict, override: str) -> None:
    """Applies one `a.b.c=value` override to a locked config, with a helpful error."""
    key, sep, raw = override.partition("=")
    if not sep:
        raise ConfigError(f"Override {override!r} must look like key=value.")
    parts = key.strip().split(".")
    node = config
    for depth, part in enumerate(parts):
        if not isinstance(node, ml_collections.ConfigDict):
            where = ".".join(parts[:depth])
            raise ConfigError(f"Unknown config key {key!r}: {where} is a value ({node!r}), not a "
                              f"section with fields; set it as {where}=VALUE")
        if part not in node:
            where = ".".join(parts[:depth]) or "<top level>"
            valid = sorted(node.keys())
            raise ConfigError(
                f"Unknown config key {key!r}: {where} has no field {part!r}."
                f"{_did_you_mean(config, parts, depth)} Valid keys there: {valid}"
            )
        if depth < len(parts) - 1:
            node = node[part]
    field = parts[-1]
    old = node[field]
    if isinstance(old, ml_collections.ConfigDict):
        raise ConfigError(f"{key} is a section, not a value; set one of its fields "
                          f"({key}.FIELD=...): {sorted(old.keys())}")
    value = parse_value(raw)
    if value is None and old is not None and not isinstance(old, str):
        # ml_collections lets None into any field; the code reading it (a seed, a step count)
        # would then fail far away with a TypeError.
        raise ConfigError(f"Cannot set {key} to None: the field is of type {type(old).__name__} "
                          f"(current value {old!r}).")
    if isinstance(value, bool) and isinstance(old, (int, float)) and not isinstance(old, bool):
        # bool is an int to Python and to ml_collections: steps=True would run one step.
        raise ConfigError(f"Cannot set {key} to {value!r}: the field is a number "
                          f"(current value {old!r}).")
    if isinstance(old, str) and not isinstance(value, str):
        value = raw  # "1e-3" for a str field stays a string
    if isinstance(old, bool) and isinstance(value, str) and value.lower() in ("true", "false"):
        value = value.lower() == "true"
    if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(old, tuple) and isinstance(value, list):
        value = tuple(value)
    if (isinstance(old, tuple) and isinstance(value, str)
            and all(isinstance(x, str) for x in old)):
        # A tuple of strings may be written as a comma list: data.labels=negative,positive.
        value = tuple(x.strip() for x in value.split(",") if x.strip())
    try:
        node[field] = value
    except (TypeError, KeyError) as e:
        raise ConfigError(
            f"Cannot set {key} to {value!r} (type {type(value).__name__}); current value is "
            f"{old!r} (type {type(old).__name__}): {e}"
        ) from e


def split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """Separates `--config.key=value` arguments from the other command-line arguments."""
    overrides, rest = [], []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--config."):
            body = arg[len("--config."):]
            if "=" not in body:
                if i + 1 >= len(argv):
                    raise ConfigError(f"{arg} needs a value: {arg}=VALUE or {arg} VALUE")
                if argv[i + 1].startswith("--"):
                    # A value left out: the next flag would become the value ("--workdir=..."
                    # as data.text_field), and that flag would be lost.
                    raise ConfigError(f"{arg} needs a value, but the next argument is the flag "
                                      f"{argv[i + 1]}; write {arg}=VALUE (a value that starts "
                                      "with -- goes after '=')")
                body = body + "=" + argv[i + 1]
                i += 1
            overrides.append(body)
        else:
            rest.append(arg)
        i += 1
    return overrides, rest


def to_dict(config: ml_collections.ConfigDict) -> dict:
    return config.to_dict()
