"""`tl_jax convert` and `init_from`: moving weights between HF and tl_jax directories.

A tl_jax weights directory is deliberately plain, readable without tl_jax:

    config.json         {"family": "bert", "config_class": "tl_jax.models.bert.BertConfig",
                         "config": {<dataclass fields>}}
    params.safetensors  float32 tensors named by `/`-joined param paths
    (tokenizer files)   copied through unchanged

    convert("hf_dir", "tl_dir", direction="hf_to_tl")
    convert("tl_dir", "hf_dir2", direction="tl_to_hf")
    convert("train_workdir", "hf_dir3", direction="tl_to_hf")  # newest checkpoint: BERT, clm
                                                               # or electra
    params, report = init_from(params, "some_dir")   # either kind of directory

A BERT encoder with factorised embeddings (`embedding_size`: a task model fine-tuned from
ELECTRA-Small) exports as a headless HF `ElectraModel`, since HF BERT has no embeddings
projection; its heads (task head, pooler) are left behind, and convert says so.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import re
import shutil
import typing
import warnings

import numpy as np

from tl_jax import interop
from tl_jax.interop import check_field_types, safetensors_io

TL_CONFIG = "config.json"
TL_PARAMS = "params.safetensors"
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json",
                   "special_tokens_map.json", "merges.txt", "vocab.json")
# Those of TOKENIZER_FILES that hold a vocabulary: without one, the others load nothing.
VOCABULARY_FILES = ("tokenizer.json", "vocab.txt", "vocab.json")
DIRECTIONS = ("hf_to_tl", "tl_to_hf")


def is_tl_dir(directory) -> bool:
    return (pathlib.Path(directory) / TL_PARAMS).exists()


def save_tl_params(directory, config, params, family: str) -> pathlib.Path:
    """Writes a tl_jax weights directory (see module doc)."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cls = type(config)
    fields, dtype_fields = {}, []
    for name, value in dataclasses.asdict(config).items():
        if not isinstance(value, (str, int, float, bool, type(None), list, dict)):
            value = np.dtype(value).name  # e.g. jnp.float32 in a config: stored by name
            dtype_fields.append(name)
        fields[name] = value
    meta = {"family": family, "config_class": f"{cls.__module__}.{cls.__qualname__}",
            "config": fields, "dtype_fields": dtype_fields}
    (directory / TL_CONFIG).write_text(json.dumps(meta, indent=2) + "\n")
    safetensors_io.write_safetensors(directory / TL_PARAMS,
                                     safetensors_io.flatten_params(params),
                                     metadata={"format": "tl_jax", "family": family})
    return directory


def load_tl_params(directory):
    """Reads a tl_jax weights directory: `(config, params, family)`."""
    directory = pathlib.Path(directory)
    config, family = load_tl_config(directory)
    flat = safetensors_io.read_safetensors(directory / TL_PARAMS)
    return config, safetensors_io.unflatten_params(flat), family


def load_tl_config(directory):
    """`(config, family)` of a tl_jax weights directory from its config.json, checked against
    the tensor names in the header of params.safetensors (`check_no_extra_layers`); no tensor
    is read: a model's shape, for checks before its weights are loaded."""
    directory = pathlib.Path(directory)
    config_file = directory / TL_CONFIG
    for f in (config_file, directory / TL_PARAMS):
        if not f.exists():
            raise FileNotFoundError(f"{directory} is not a tl_jax weights directory: no {f.name}")
    meta, _ = interop.read_config_json(directory)
    for key in ("family", "config_class", "config"):
        if key not in meta:
            raise ValueError(f"{config_file}: missing key {key!r} (is this a HF config.json? "
                             f"use direction='hf_to_tl')")
    classes = _config_classes()
    cls = classes.get(meta["config_class"]) if isinstance(meta["config_class"], str) else None
    if cls is None:  # nor is any other module imported because a file names it
        raise ValueError(f"{config_file}: config_class {json.dumps(meta['config_class'])} is not "
                         f"one tl_jax writes ({', '.join(sorted(classes))})")
    if not isinstance(meta["config"], dict):
        raise ValueError(f"{config_file}: config must be a JSON object (the {cls.__name__} "
                         f"fields), got {json.dumps(meta['config'])[:60]}")
    fields = dict(meta["config"])
    for name in meta.get("dtype_fields", []):
        fields[name] = np.dtype(fields[name])
    config = _build_config(cls, fields, config_file)
    names = safetensors_io.tensor_names(directory / TL_PARAMS)
    check_no_extra_layers(names, config, config_file, directory / TL_PARAMS)
    return config, meta["family"]


# Where each config class's layers sit in its param paths, and the field that counts them: the
# encoder's `layer_<i>` (under `bert/`, or at the top of a headless BertModel tree), an ELECTRA
# pair's generator and discriminator, a GPT's blocks `h_<i>`.
_BERT_LAYER = r"^(?!generator/)(?:.*/)?encoder/layer_(\d+)/"
_LAYERS = {
    "BertConfig": ((_BERT_LAYER, "num_layers"),),
    "ElectraConfig": ((_BERT_LAYER, "discriminator.num_layers"),
                      (r"^generator/encoder/layer_(\d+)/", "generator_num_layers")),
    "GPTConfig": ((r"^(?:.*/)?h_(\d+)/", "num_layers"),),
}


def check_no_extra_layers(flat, config, config_file, params_file) -> None:
    """An error when a tl_jax weights directory's params (`flat`: their names, or a dict by
    name) hold more layers than its config.json declares (as
    `interop.bert.check_no_extra_layers` for a HF directory).

    Loading by the config would leave the top layers out as "unused" tensors: a shallower
    model than the one trained, without a word. Only the user knows whether the config or the
    weights are right. Keeping fewer layers on purpose is `model.num_layers` of a fine-tuning
    config, which reads the whole directory and leaves the top layers out of the model."""
    for pattern, field in _LAYERS.get(type(config).__name__, ()):
        declared = config
        for name in field.split("."):
            declared = getattr(declared, name)
        present = sorted({int(m.group(1)) for m in map(re.compile(pattern).match, flat) if m})
        extra = [i for i in present if i >= declared]
        if extra:
            raise ValueError(
                f"{params_file} holds {len(present)} layers (layer indices "
                f"{_ranges(present)}) but {config_file} declares config.{field}={declared}, so "
                f"layer(s) {_ranges(extra)} would be dropped. Correct config.{field} in "
                "config.json; to fine-tune only the bottom layers, keep the config as it is "
                "and set model.num_layers instead.")


def _ranges(indices: list[int]) -> str:
    """`[0, 1, 2, 5]` -> "0-2, 5"."""
    parts, start = [], None
    for i, n in enumerate(indices):
        if start is None:
            start = n
        if i + 1 == len(indices) or indices[i + 1] != n + 1:
            parts.append(str(start) if start == n else f"{start}-{n}")
            start = None
    return ", ".join(parts)


def _config_classes() -> dict:
    """`config_class` name (as `save_tl_params` writes it) -> the config dataclass."""
    from tl_jax.models.bert import BertConfig
    from tl_jax.models.electra import ElectraConfig
    from tl_jax.models.gpt import GPTConfig

    return {f"{c.__module__}.{c.__qualname__}": c for c in (BertConfig, ElectraConfig, GPTConfig)}


def _build_config(cls, fields: dict, source, prefix: str = "config."):
    """`cls(**fields)`, rebuilding nested dataclass fields (an ElectraConfig's discriminator
    `BertConfig`) from the dicts `dataclasses.asdict` wrote. A field of the wrong JSON type (a
    hand-edited `"num_layers": "6"`), an unknown or a missing one is an error naming `source`
    and the field (`prefix` + its name) rather than a TypeError from the dataclass."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    required = {f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    unknown, missing = sorted(set(fields) - names), sorted(required - set(fields))
    if unknown or missing:
        what = "; ".join(part for part in (
            unknown and f"unknown field(s) {[prefix + n for n in unknown]}",
            missing and f"missing field(s) {[prefix + n for n in missing]}") if part)
        raise ValueError(f"{source}: not a {cls.__name__}: {what}")
    check_field_types({prefix + name: value for name, value in fields.items()}, source,
                      {prefix + name: hints[name] for name in fields
                       if hints[name] in (int, float, str, bool)
                       and not isinstance(fields[name], np.dtype)})  # dtype_fields: rebuilt
    for name, value in fields.items():
        kind = hints.get(name)
        if dataclasses.is_dataclass(kind):
            if not isinstance(value, dict):
                raise ValueError(f"{source}: {prefix + name} must be a JSON object (the "
                                 f"{kind.__name__} fields), got {json.dumps(value)}")
            fields[name] = _build_config(kind, dict(value), source, f"{prefix}{name}.")
    return cls(**fields)


def _copy_tokenizer(src: pathlib.Path, dst: pathlib.Path) -> list[str]:
    copied = []
    for name in TOKENIZER_FILES:
        if (src / name).exists():
            shutil.copyfile(src / name, dst / name)
            copied.append(name)
    return copied


def _note_no_tokenizer(src: pathlib.Path, dst: pathlib.Path, direction: str) -> None:
    """Says that `dst` got weights without a vocabulary, as a workdir export that lost its
    tokenizer/ does (`_workdir_tokenizer`): nothing later would, until the ids went wrong."""
    if direction == "hf_to_tl":
        # A run finds no vocabulary of init_from's and is refused until data.tokenizer names
        # one (`bert_pretrain.with_init_from_tokenizer`, `downstream.source_tokenizer`).
        meaning = (f"a run with init_from={dst} needs data.tokenizer to name the vocabulary "
                   "the weights were trained with (it is refused without one)")
    else:
        meaning = "transformers' AutoTokenizer has nothing to load from it"
    print(f"[convert] Note: {src} has no tokenizer files ({' or '.join(VOCABULARY_FILES)}), "
          f"so {dst} gets the weights without a vocabulary: {meaning}. Copy the model's "
          f"tokenizer files into {dst} for a directory that carries its own.", flush=True)


def _electra_halves(src: pathlib.Path, config) -> str:
    """What an ELECTRA hf_to_tl conversion read: the pair, or the discriminator alone."""
    if hasattr(config, "generator_num_layers"):  # an ElectraConfig: the pretraining pair
        return (f"pair: the discriminator from {src} and the generator "
                f"({config.generator_num_layers} layers x {config.generator_hidden_size}) from "
                f"{src / 'generator'}")
    return (f"discriminator only, from {src} (a generator would be read from "
            f"{src / 'generator'}, which holds none)")


def convert(src, dst, direction: str = "hf_to_tl") -> pathlib.Path:
    """Converts a checkpoint directory between the HF layout and tl_jax's.

    hf_to_tl: BERT checkpoints without MLM/NSP heads stay headless (no random heads are
    invented); a missing pooler is initialised fresh with a warning. tl_to_hf: the HF model
    gets heads exactly when the tl_jax tree has them, except a factorised BERT encoder, which
    exports headless as `ElectraModel` (HF BERT cannot hold its projection). ELECTRA: a
    discriminator directory converts alone, or with its generator when `src/generator/` holds
    one, and back the same way. Tokenizer files are copied along.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    src, dst = pathlib.Path(src), pathlib.Path(dst)
    if not src.exists():
        raise FileNotFoundError(f"convert: input {src} does not exist")
    if src.resolve() == dst.resolve():
        raise ValueError(f"convert: source and destination are the same directory {src}")
    if (src / "static_config.json").is_file():
        raise ValueError(f"convert: {src} holds static word vectors (`tl_jax static`), not a "
                         "model checkpoint, and has no Hugging Face layout: its vectors.* files "
                         "are already word2vec/GloVe formats that gensim reads")
    if is_trainer_workdir(src):
        # Exporting into the run's own tokenizer or checkpoint folders would overwrite files
        # the run still reads (the tokenizer would be copied onto itself).
        for inner in ("tokenizer", "checkpoints"):
            folder = (src / inner).resolve()
            if dst.resolve() == folder or folder in dst.resolve().parents:
                raise ValueError(f"convert: destination {dst} is inside the run's {inner}/ "
                                 f"folder; choose a directory outside {src / inner}")
    # Its config.json would be overwritten by another kind of file: a run that no longer
    # resumes, or a checkpoint that no longer loads.
    if is_trainer_workdir(dst):
        raise ValueError(f"convert: destination {dst} is a `tl_jax train` workdir; writing there "
                         "would overwrite its run's config.json. Choose a new directory.")
    if direction == "tl_to_hf" and is_trainer_workdir(src):
        _check_exportable(src)
    if check_destination(dst, direction, src):
        # An earlier export's tokenizer files go with it: one this export does not write (a
        # tokenizer.json beside a new vocab.txt) would be loaded instead of the new one, by
        # transformers and tl_jax alike, and give another vocabulary's ids.
        for folder in (dst, dst / "generator"):
            for name in TOKENIZER_FILES:
                if (folder / name).is_file():
                    (folder / name).unlink()
    if direction == "hf_to_tl" and (is_trainer_workdir(src) or is_tl_dir(src)):
        # hf_to_tl is the default: a tl_jax directory given without --direction.
        kind = "a `tl_jax train` workdir" if is_trainer_workdir(src) else "a tl_jax weights directory"
        raise ValueError(f"convert: {src} is {kind}, not a Hugging Face checkpoint; export it "
                         "with --direction=tl_to_hf")
    if direction == "hf_to_tl":
        name = interop.model_type(src)
        module = interop.family(name)
        if name == "bert":
            config, params, report = module.load(src, with_heads=True, warn=False)
            heads = [p for p in report.missing if not p.startswith("bert/")]
            if heads and len(heads) == sum(1 for _ in _head_paths(params)):
                params = params["bert"]  # headless checkpoint -> BertModel tree
                report.missing = [p for p in report.missing if p.startswith("bert/")]
            elif heads:
                warnings.warn(f"{src}: partial heads; freshly initialised: {heads}")
            pooler = [p for p in report.missing if p.startswith("bert/pooler/")]
            if pooler:
                warnings.warn(f"{src}: no pooler in the checkpoint; freshly initialised")
            print(f"[convert] {report}")  # used / derived / unused / missing tensors
        else:
            config, params = module.load_pretrained(src)
            if name == "electra":
                print(f"[convert] ELECTRA {_electra_halves(src, config)}")
        save_tl_params(dst, config, params, name)
    elif is_trainer_workdir(src):
        _export_trainer_workdir(src, dst)
        return dst
    else:
        config, params, name = load_tl_params(src)
        if name == "bert" and config.factorised:
            print(f"[convert] {src}: " + _export_factorised_encoder(
                safetensors_io.flatten_params(params), config, dst, None))
        else:
            interop.family(name).save_pretrained(dst, config, params)
    if not set(_copy_tokenizer(src, dst)) & set(VOCABULARY_FILES):
        _note_no_tokenizer(src, dst, direction)
    if direction == "tl_to_hf" and (dst / "generator" / "config.json").exists():
        _copy_tokenizer(src, dst / "generator")  # an ELECTRA pair: each half loads alone
    return dst


def check_destination(dst: pathlib.Path, direction: str, src=None) -> bool:
    """Refuses a destination convert would spoil, and says when it replaces an earlier export
    (then returns True).

    A missing or empty folder is written as it is. One holding a checkpoint of the kind this
    direction writes (tl_jax weights for hf_to_tl, a Hugging Face checkpoint for tl_to_hf: an
    earlier conversion, typically) of the same model family as `src`'s export gets its files
    replaced, and convert says so first. Anything else is refused: another kind of checkpoint
    (its config.json would be overwritten, leaving weights that no longer load), one of another
    family (a GPT-2 export replaced by a BERT one: the folder's name, and whatever reads it,
    would then mean another model), or a folder of other files (they would be mixed with the
    export's)."""
    if dst.exists() and not dst.is_dir():
        raise ValueError(f"convert: destination {dst} is a file; give a directory to write to")
    if not dst.is_dir():
        return False
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in dst.iterdir())
    if not entries:
        return False
    writes = "tl_jax weights" if direction == "hf_to_tl" else "a Hugging Face checkpoint"
    if not (dst / TL_CONFIG).exists():
        from tl_jax.checkpoint import some_names
        shown = some_names(entries, 5)
        raise ValueError(f"convert: destination {dst} is not empty ({shown}) and holds no "
                         f"checkpoint ({TL_CONFIG}); writing {writes} there would mix them with "
                         "those files. Choose a new or empty directory.")
    held = "tl_jax weights" if is_tl_dir(dst) else "a Hugging Face checkpoint"
    if held != writes:
        raise ValueError(f"convert: destination {dst} holds {held}, whose config.json this "
                         f"{direction} conversion would overwrite. Choose a new directory.")
    old, new = _held_family(dst), (_export_family(src, direction) if src else None)
    if old and new and old != new:
        raise ValueError(f"convert: destination {dst} holds {held} of another model family "
                         f"({_FAMILY_NAMES.get(old, old)}, model_type {old!r}) than this export "
                         f"({_FAMILY_NAMES.get(new, new)}, model_type {new!r}); replacing it "
                         "would put another model under its name. Choose a new directory.")
    # The same kind: an earlier export, replaced. Its tokenizer files are removed (`convert`);
    # other files this export does not write (a generator/ of an ELECTRA pair) stay, so they
    # are named.
    print(f"[convert] {dst} already holds {held} ({', '.join(entries)}): replacing it; the "
          "files this export writes are overwritten and the old tokenizer files removed, any "
          "others stay as they are.", flush=True)
    return True


_FAMILY_NAMES = {"bert": "BERT", "electra": "ELECTRA", "gpt2": "GPT-2"}


def _held_family(dst: pathlib.Path) -> str | None:
    """The model family of the checkpoint in `dst`: its tl_jax config.json's "family", or a
    Hugging Face config.json's "model_type"; None when it does not say."""
    try:
        meta = json.loads((dst / TL_CONFIG).read_text(encoding="utf-8-sig"))
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict):
        return None
    name = meta.get("family") if is_tl_dir(dst) else meta.get("model_type")
    return name if isinstance(name, str) else None


def _export_family(src: pathlib.Path, direction: str) -> str | None:
    """The model family (`_held_family`'s name) converting `src` in `direction` writes; None
    when that cannot be told before converting (a broken source is named by the conversion)."""
    try:
        if direction == "hf_to_tl":
            return interop.model_type(src)
        if is_trainer_workdir(src):
            from tl_jax import checkpoint

            task = checkpoint.load_run_config(str(src)).get("task")
            if task in ("clm", "electra"):
                return {"clm": "gpt2", "electra": "electra"}[task]
            shapes, _ = checkpoint.param_shapes_from_workdir(str(src))
            # A factorised BERT encoder exports as an ElectraModel (`_export_factorised_encoder`).
            factorised = any(p.endswith("embeddings_project/kernel") for p in shapes)
            return "electra" if factorised else "bert"
        config, family = load_tl_config(src)
        return "electra" if family == "bert" and config.factorised else family
    except Exception:  # noqa: BLE001 - only a refusal's wording depends on it
        return None


def is_trainer_workdir(directory) -> bool:
    """A `tl_jax train` workdir: orbax checkpoints/ plus the run's config.json."""
    directory = pathlib.Path(directory)
    return (directory / "checkpoints").is_dir() and (directory / TL_CONFIG).exists()


def _export_trainer_workdir(src: pathlib.Path, dst: pathlib.Path) -> None:
    """HF export of the newest checkpoint of a BERT run (pretraining or fine-tuning), of a
    GPT language model (`clm`) run as `GPT2LMHeadModel`, or of an `electra` run as
    `ElectraForPreTraining` + `generator/ElectraForMaskedLM`.

    The architecture comes from the param shapes, the rest (activation, dropout) from the
    run's config; a pretraining run keeps its MLM/NSP heads, a task model exports its encoder.
    A factorised encoder (fine-tuned from ELECTRA-Small) exports as a headless `ElectraModel`.
    """
    from tl_jax import checkpoint
    from tl_jax.interop import bert as hf_bert

    run_config = checkpoint.load_run_config(str(src))
    task = run_config.get("task")
    if task == "clm":
        _export_gpt_workdir(src, dst)
        return
    if task == "electra":
        _export_electra_workdir(src, dst, run_config)
        return
    flat, step = checkpoint.load_params_from_workdir(str(src))
    model = run_config.get("model", {}) if isinstance(run_config.get("model"), dict) else {}
    extra = {k: model[k] for k in ("hidden_act", "layer_norm_eps", "dropout_rate",
                                   "attention_dropout_rate") if k in model}
    # The model the run built, for what shapes cannot tell: a LoRA run's lora_alpha lives in
    # transfer.lora_alpha, not model, and its update was merged at alpha 1 (1/16 of its scale
    # for configs/transfer_lora.py).
    extra.update(checkpoint.unshaped_model_fields(str(src), step))
    params, has_heads = hf_bert.encoder_and_heads(safetensors_io.unflatten_params(flat))
    config = hf_bert.config_from_params(params, **extra)
    tokenizer = _workdir_tokenizer(src, dst)
    if config.factorised:
        what = _export_factorised_encoder(flat, config, dst, tokenizer)
        print(f"[convert] {src} step {step}: {what}")
        return
    hf_bert.export(params, config, dst, with_heads=has_heads, tokenizer=tokenizer)
    left = ""
    if task == "distill":
        # Not "its task head ... `tl_jax predict` uses the workdir": a distill run has no task
        # head, and predict refuses it.
        left = " (the student of a distill run; its frozen teacher is not exported)"
    elif task and task != "bert_pretrain":
        left = (f" (the encoder of a {task} run: its task head has no place in the Hugging Face "
                "BertModel layout and is not exported; `tl_jax predict` uses the workdir)")
    print(f"[convert] {src} step {step}: BERT {config.num_layers}x{config.hidden_size}, "
          f"{'with' if has_heads else 'without'} MLM/NSP heads{left}")


def _check_exportable(src: pathlib.Path) -> None:
    """Refuses, before anything is written or removed, a workdir whose task has no Hugging Face
    layout (`_export_trainer_workdir` would find no BERT encoder in it)."""
    from tl_jax import checkpoint

    task = checkpoint.load_run_config(str(src)).get("task")
    if task == "lm_classify":
        raise ValueError(f"convert: {src} is a GPT classifier (task lm_classify), which has no "
                         "GPT-2 layout; export the clm workdir its LM came from")
    if task == "bilm":
        raise ValueError(f"convert: {src} was trained with task='bilm' (an ELMo-style biLM), "
                         "which has no Hugging Face layout; convert exports BERT (bert_pretrain "
                         "and BERT fine-tuning runs), ELECTRA (electra) and GPT (clm) runs. A "
                         "biLM's ELMo features are used from Python: load_elmo, ElmoEncoder and "
                         "ElmoClassifier in tl_jax.elmo_features.")


def _workdir_tokenizer(src: pathlib.Path, dst: pathlib.Path) -> pathlib.Path | None:
    """The run's `tokenizer/` folder, exported beside the weights. A workdir that lost it
    (deleted, or not copied with the workdir) still exports its weights, but says so: the
    directory then has no tokenizer files for transformers to load, and no vocabulary is
    made up for it."""
    folder = src / "tokenizer"
    if any((folder / name).is_file() for name in ("tokenizer.json", "vocab.txt")):
        return folder
    print(f"[convert] Note: {src} has no tokenizer/ (the vocabulary the run was trained "
          f"with: deleted, or not copied with the workdir?), so {dst} gets the weights without "
          f"tokenizer files. Put it back in {folder} and convert again for a directory "
          "transformers' AutoTokenizer loads.", flush=True)
    return None


def _export_factorised_encoder(flat: dict, config, dst: pathlib.Path, tokenizer) -> str:
    """The BERT encoder of `flat` (any tree holding one), whose embeddings are factorised, as a
    headless HF `ElectraModel`: HF BERT has no `embeddings_project`, HF ELECTRA has. Everything
    else (a task head, the pooler, MLM/NSP heads) stays behind; returns a line saying what was
    written and what was left."""
    from tl_jax.interop import bert as hf_bert
    from tl_jax.interop import electra as hf_electra

    root = hf_bert.find_bert_root(flat)
    encoder = {"bert/" + p[len(root):]: v for p, v in flat.items()
               if p.startswith(root) and not p.startswith(root + "pooler/")}
    left = sorted({root + "pooler" if p.startswith(root) else p.split("/")[0]
                   for p in flat if not p.startswith(root) or p.startswith(root + "pooler/")})
    hf_electra.export_encoder(safetensors_io.unflatten_params(encoder), config, dst,
                              tokenizer=tokenizer)
    line = (f"factorised BERT encoder {config.num_layers}x{config.hidden_size} (embeddings "
            f"{config.embedding_size} wide, projected) -> {dst} as a headless HF ElectraModel "
            "(HF BERT has no embeddings projection)")
    if left:
        line += f"; not exported (no place in ElectraModel): {', '.join(left)}"
    return line


def _export_electra_workdir(src: pathlib.Path, dst: pathlib.Path, run_config: dict) -> None:
    """An `electra` workdir's newest checkpoint: the discriminator as `ElectraForPreTraining`
    in `dst`, the generator as `ElectraForMaskedLM` in `dst/generator`, each with the run's
    tokenizer. Shapes come from the params, activation and dropout from the run's config."""
    from tl_jax import checkpoint
    from tl_jax.interop import electra as hf_electra

    flat, step = checkpoint.load_params_from_workdir(str(src))
    model = run_config.get("model", {}) if isinstance(run_config.get("model"), dict) else {}
    extra = {k: model[k] for k in ("hidden_act", "layer_norm_eps", "dropout_rate",
                                   "attention_dropout_rate") if k in model}
    params = safetensors_io.unflatten_params(flat)
    config = hf_electra.config_from_params(params, **extra)
    tokenizer = _workdir_tokenizer(src, dst)
    hf_electra.export(params, config, dst, tokenizer=tokenizer)
    d = config.discriminator
    print(f"[convert] {src} step {step}: ELECTRA discriminator {d.num_layers}x{d.hidden_size} "
          f"-> {dst}, generator {config.generator_num_layers}x{config.generator_hidden_size} "
          f"-> {dst / hf_electra.GENERATOR_SUBDIR}")


def _export_gpt_workdir(src: pathlib.Path, dst: pathlib.Path) -> None:
    """A `clm` workdir's newest checkpoint as a GPT-2 directory: config.json (with the
    `<|endoftext|>` id as bos/eos), model.safetensors, vocab.json + merges.txt."""
    from tl_jax.generate import load_model
    from tl_jax.interop import gpt2

    # The params stay host numpy: they are only written out again, so no device needs a copy.
    model, params, tokenizer = load_model(str(src), caller="convert", on_device=False)
    eos = tokenizer.eos_id
    gpt2.save_pretrained(dst, model.config, params, bos_token_id=eos, eos_token_id=eos)
    tokenizer.save(str(dst))
    print(f"[convert] {src}: GPT {model.config.num_layers}x{model.config.embed_dim}, "
          f"vocabulary {model.config.vocab_size}")


def _head_paths(params):
    flat = safetensors_io.flatten_params(params)
    return [p for p in flat if not p.startswith("bert/")]


def init_from(params, directory, *, warn: bool = True):
    """Merges weights from `directory` (HF or tl_jax layout) into an initialised param tree.

    Returns `(params, report)`. For a HF directory see the family's `init_from_hf`. For a
    tl_jax BERT directory the encoder is matched wherever it sits in either tree (e.g. a
    pretraining checkpoint's `bert/` into a classifier's encoder); other families match paths
    exactly. Shape mismatches are errors; params with no source keep their initial values.
    """
    directory = pathlib.Path(directory)
    if not is_tl_dir(directory):
        module = interop.family_of(directory)
        if not hasattr(module, "init_from_hf"):
            raise ValueError(f"init_from: the {interop.model_type(directory)!r} family has no "
                             "init_from_hf; convert the checkpoint to a tl_jax directory first")
        return module.init_from_hf(params, directory, warn=warn)

    _, source_params, family = load_tl_params(directory)
    source = safetensors_io.flatten_params(source_params)
    target = safetensors_io.flatten_params(params, to_host=False)  # shapes and dtypes only
    src_root = dst_root = ""
    if family in ("bert", "electra"):
        from tl_jax.interop.bert import find_bert_root

        src_root, dst_root = find_bert_root(source), find_bert_root(target)
    merged, taken, unused = dict(target), set(), []
    for path, value in source.items():
        if src_root and path.startswith(src_root):
            dest = dst_root + path[len(src_root):]
        elif src_root.endswith("bert/") and dst_root.endswith("bert/"):
            dest = dst_root[: -len("bert/")] + path  # heads beside the encoder
        else:
            dest = path
        if dest not in target:
            unused.append(path)
            continue
        if tuple(target[dest].shape) != value.shape:
            raise ValueError(f"{directory / TL_PARAMS}: {path} has shape {value.shape}, but the "
                             f"model's {dest} has {tuple(target[dest].shape)}")
        merged[dest] = value.astype(target[dest].dtype)
        taken.add(dest)
    if not taken:
        raise ValueError(f"init_from {directory}: no parameter path matches the model")
    report = interop.LoadReport(
        source=str(directory / TL_PARAMS),
        used=sorted(p for p in source if p not in unused),
        unused=sorted(unused),
        missing=sorted(p for p in target if p not in taken),
    )
    if warn and report.missing:
        warnings.warn(f"init_from {directory}: {len(report.missing)} params keep their fresh "
                      f"initialisation: {report.missing[:10]}")
    return safetensors_io.unflatten_params(merged), report


def run(src, dst, direction: str = "hf_to_tl") -> None:
    """Entry point for `tl_jax convert --src=DIR --dst=DIR --direction=hf_to_tl|tl_to_hf`."""
    out = convert(src, dst, direction)
    files = ", ".join(sorted(p.name for p in out.iterdir()))
    print(f"converted {src} -> {out} ({direction}): {files}")
