"""Hugging Face <-> tl_jax weights, one file per model family.

`FAMILIES` maps a HF `config.json` `model_type` to the module that converts it. Each family
module provides

    load_pretrained(directory) -> (config, params)     # HF directory -> tl_jax
    save_pretrained(directory, config, params)         # tl_jax -> HF directory

and whatever richer API its family needs (see `interop/bert.py`: load reports, export with or
without heads, tokenizers, `init_from_hf`). Adding a family (DistilBERT, ...) means one
new file with those two functions and one line here.
"""
import dataclasses
import importlib
import json
import pathlib

FAMILIES = {
    "bert": "tl_jax.interop.bert",
    "electra": "tl_jax.interop.electra",
    "gpt2": "tl_jax.interop.gpt2",
}


@dataclasses.dataclass
class LoadReport:
    """What happened to every tensor: `used`, `derived` (buffers and tied copies, checked and
    skipped), `unused` (in the checkpoint, not in tl_jax) and `missing` (tl_jax params the
    checkpoint lacked, freshly initialised). Names are the checkpoint's, paths are tl_jax's."""

    source: str
    used: list = dataclasses.field(default_factory=list)
    derived: list = dataclasses.field(default_factory=list)
    unused: list = dataclasses.field(default_factory=list)
    missing: list = dataclasses.field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"{self.source}: {len(self.used)} tensors used, {len(self.derived)} derived "
                 f"(buffers/tied), {len(self.unused)} unused, {len(self.missing)} missing"]
        if self.unused:
            lines.append("  unused: " + ", ".join(self.unused))
        if self.missing:
            lines.append("  missing (freshly initialised): " + ", ".join(self.missing))
        return "\n".join(lines)


def read_config_json(directory) -> tuple[dict, pathlib.Path]:
    """A HF directory's config.json as `(dict, path)`; a clear error when the directory or the
    file is missing or the file is not JSON."""
    directory = pathlib.Path(directory)
    config_file = directory / "config.json"
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} is not a directory")
    if not config_file.exists():
        raise FileNotFoundError(f"{directory} is not a Hugging Face checkpoint: no config.json")
    try:
        hf = json.loads(config_file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{config_file}:{e.lineno}: invalid JSON ({e.msg})") from e
    return hf, config_file


_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
               type(None): "null"}


def _has_type(value, kind) -> bool:
    if kind is type(None):
        return value is None
    if isinstance(value, bool):  # JSON true/false are Python ints: only a bool field takes them
        return kind is bool
    if kind is float:
        return isinstance(value, (int, float))  # 0 for a dropout rate is fine
    return isinstance(value, kind)


def check_field_types(fields: dict, source, types: dict) -> None:
    """A clear error naming `source`, the field and its value when a field of a config.json
    that tl_jax reads has the wrong JSON type (`"num_hidden_layers": "6"`, `null`): before it
    reaches a model config, where it would fail as a bare TypeError. Absent fields are left to
    the caller (defaults, or its own missing-field error).

    types: field name -> a type (int, float, str, bool) or a tuple of them (`(int, type(None))`
    for an optional size). An integral float (`384.0`) is not an integer: transformers' configs
    refuse it too, and a size written that way is more likely a mistake than a convention.
    """
    for name, kinds in types.items():
        if name not in fields:
            continue
        kinds = kinds if isinstance(kinds, tuple) else (kinds,)
        value = fields[name]
        if not any(_has_type(value, kind) for kind in kinds):
            want = " or ".join(_TYPE_NAMES[kind] for kind in kinds)
            raise ValueError(f"{source}: {name} must be {want}, got {json.dumps(value)}")


def check_not_a_workdir(hf: dict, config_file) -> None:
    """A `tl_jax train` workdir's config.json read as a Hugging Face one is said to be one, with
    how to read the run's weights ("model_type=None ... not a BERT checkpoint" said neither)."""
    if "model_type" not in hf and isinstance(hf.get("task"), str) and "train" in hf:
        workdir = pathlib.Path(config_file).parent
        raise ValueError(f"{config_file} is the config of a `tl_jax train` workdir (task "
                         f"{hf['task']!r}), not of a Hugging Face checkpoint: export the run's "
                         f"weights with `tl_jax convert --input={workdir} --output=DIR` and give "
                         "DIR")


def model_type(directory) -> str:
    """The `model_type` in a HF directory's config.json (clear errors when there is none)."""
    hf, config_file = read_config_json(directory)
    check_not_a_workdir(hf, config_file)
    if "model_type" not in hf:
        raise ValueError(f"{config_file} has no model_type; known families: {sorted(FAMILIES)}")
    return hf["model_type"]


def family(name: str):
    """The interop module for HF `model_type` `name`."""
    if name not in FAMILIES:
        raise ValueError(f"no tl_jax interop for model_type {name!r}; known: {sorted(FAMILIES)}")
    return importlib.import_module(FAMILIES[name])


# Families whose HF checkpoint holds a BERT-style encoder that `init_from` takes into any
# fine-tuning model; each module has read_hf_config, load_flat_params and init_from_hf.
ENCODER_FAMILIES = ("bert", "electra")


def encoder_family_of(directory):
    """The interop module of a HF directory holding a BERT-style encoder (BERT, ELECTRA)."""
    name = model_type(directory)
    if name not in ENCODER_FAMILIES:
        raise ValueError(f"{directory}: model_type={name!r} is not a BERT-style encoder; "
                         f"fine-tuning takes {list(ENCODER_FAMILIES)} checkpoints")
    return family(name)


def family_of(directory):
    """The interop module for the checkpoint in `directory`."""
    return family(model_type(directory))
