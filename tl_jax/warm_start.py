"""Initialising a model from earlier weights: a tl_jax workdir or a Hugging Face directory.

This is the basis of transfer: take every tensor that matches by name and shape, keep the
fresh initialisation for the rest (new heads), and say exactly what was and wasn't taken.
"""
from __future__ import annotations

import os

from tl_jax import checkpoint


class WarmStartError(ValueError):
    """`init_from` names something that cannot initialise this model."""


def is_tl_workdir(path: str) -> bool:
    return os.path.isdir(os.path.join(path, "checkpoints"))


def is_tl_weights(path: str) -> bool:
    """A tl_jax weights directory (`tl_jax convert` output): config.json + params.safetensors."""
    return os.path.isfile(os.path.join(path, "params.safetensors")) and not is_tl_workdir(path)


def is_hf_directory(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "config.json")) and not is_tl_workdir(path)


def bert_weights(path: str):
    """`(BertConfig, flat params with the encoder under bert/)` of a tl_jax weights directory."""
    from tl_jax.interop import convert, safetensors_io
    config, params, family = convert.load_tl_params(path)
    if family not in ("bert", "electra"):
        raise WarmStartError(f"{path} holds {family!r} weights, not a BERT encoder.")
    config = getattr(config, "discriminator", config)  # an ELECTRA pair: the encoder that fine-tunes
    flat = safetensors_io.flatten_params(params)
    if not any(name.startswith("bert/") for name in flat):  # a headless BertModel tree
        flat = {"bert/" + name: value for name, value in flat.items()}
    return config, flat


def report_lines(report: dict, source: str) -> list[str]:
    lines = [f"[init_from] {source}: took {len(report['taken'])} tensors."]
    if report["not_in_checkpoint"]:
        lines.append(f"[init_from] freshly initialised (not in the source): "
                     f"{', '.join(report['not_in_checkpoint'])}")
    for name, want, got in report["shape_mismatch"]:
        lines.append(f"[init_from] NOT taken, shape differs: {name} model {want} vs source {got}")
    if report["unused"]:
        lines.append(f"[init_from] unused source tensors: {', '.join(report['unused'])}")
    return lines


def mlm_head_command(source: str, tokenizer: str, workdir: str = "runs/teacher_mlm") -> str:
    """The continued-pretraining command that gives an encoder without an MLM head (e.g.
    all-MiniLM-L6-v2) one: its own architecture and tokenizer, since its shape may be in no
    size table."""
    return (f"tl_jax train --config=configs/bert_pretrain.py --config.model.size={source} "
            f"--config.init_from={source} --config.data.tokenizer={tokenizer} "
            f"--workdir={workdir}")


def require_source(path: str, what: str = "init_from") -> None:
    """A clear error for a weight source that is not there (before any reader guesses its kind)."""
    if not os.path.exists(path):
        raise WarmStartError(f"{what}={path!r} does not exist.")


def warm_start(params, init_from: str, model_config=None, prefix_map: dict | None = None,
               only: str = ""):
    """Returns `params` with every matching tensor taken from `init_from`.

    `init_from` is a tl_jax workdir (newest good checkpoint) or a Hugging Face BERT or ELECTRA
    directory.
    `prefix_map` renames source prefixes first, e.g. `{"bert/": "encoder/"}` when a task model
    names its encoder differently from the pretraining model. With `only`, just the tensors
    under that prefix are taken (e.g. "bert/": a fine-tuned workdir's head stays behind).
    """
    require_source(init_from)
    if is_tl_workdir(init_from):
        source, step = checkpoint.load_params_from_workdir(init_from)
        label = f"{init_from} (step {step})"
    elif is_tl_weights(init_from):
        _, source = bert_weights(init_from)
        label = f"tl_jax weights {init_from}"
    elif is_hf_directory(init_from):
        from tl_jax import interop  # torch-free path: safetensors / numpy
        source = interop.encoder_family_of(init_from).load_flat_params(init_from, model_config)
        label = f"Hugging Face checkpoint {init_from}"
    else:
        raise WarmStartError(
            f"init_from={init_from!r} is neither a tl_jax workdir (no checkpoints/ inside), nor "
            "tl_jax weights (no params.safetensors), nor a Hugging Face directory (no "
            "config.json inside).")
    if prefix_map:
        renamed = {}
        for name, value in source.items():
            for old, new in prefix_map.items():
                if name.startswith(old):
                    name = new + name[len(old):]
                    break
            renamed[name] = value
        source = renamed
    if only:
        source = {name: value for name, value in source.items() if name.startswith(only)}
    params, report = checkpoint.merge_matching(params, source)
    if not report["taken"]:
        # A few names of each side, enough to see how the two namings differ: the whole lists
        # ran to hundreds of names for a BERT-base or GPT-2 source.
        mismatched = [name for name, _, _ in report["shape_mismatch"]]
        differ = [f"{n} model {w} vs source {g}" for n, w, g in report["shape_mismatch"]]

        def some(names):
            return checkpoint.some_names(names, 4, none="none")

        raise WarmStartError(
            f"init_from={init_from!r}: no tensor matched this model by name and shape. The "
            f"model's tensors: {some(report['not_in_checkpoint'] + mismatched)}; the "
            f"source's: {some(report['unused'] + mismatched)}"
            + (f" (in both, with other shapes: {some(differ)})" if differ else "") + ".")
    for line in report_lines(report, label):
        print(line, flush=True)
    return params
