"""Initialising a model from earlier weights: a tl_jax workdir or a Hugging Face directory.

This is the basis of transfer: take every tensor that matches by name and shape, keep the
fresh initialisation for the rest (new heads), and say exactly what was and wasn't taken.
"""
from __future__ import annotations

import contextlib
import contextvars
import os
import re

import jax

from tl_jax import checkpoint


class WarmStartError(ValueError):
    """`init_from` names something that cannot initialise this model."""


def is_tl_workdir(path: str) -> bool:
    return os.path.isdir(os.path.join(path, "checkpoints"))


def is_tl_weights(path: str) -> bool:
    """A tl_jax weights directory (`tl_jax convert` output): config.json + params.safetensors."""
    return os.path.isfile(os.path.join(path, "params.safetensors")) and not is_tl_workdir(path)


# A model folder's weights, as Hugging Face (safetensors, torch, TF, Flax) and `tl_jax convert`
# write them.
MODEL_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                      "pytorch_model.bin.index.json", "tf_model.h5", "flax_model.msgpack",
                      "params.safetensors")


def model_files(path: str) -> list[str]:
    """The weight files of a model folder (a Hugging Face checkpoint or `tl_jax convert`'s
    output: config.json and weights, no checkpoints/) in `path`; [] for anything else. A
    command that writes a workdir refuses one: it would overwrite the model's files."""
    if not os.path.isfile(os.path.join(path, "config.json")) or is_tl_workdir(path):
        return []
    return [name for name in MODEL_WEIGHT_FILES if os.path.exists(os.path.join(path, name))]


def is_hf_directory(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "config.json")) and not is_tl_workdir(path)


def bert_config(path: str):
    """The encoder's `BertConfig` of a tl_jax weights directory, from its config.json alone (no
    tensor is read: a model's shape, checked before its weights are loaded)."""
    from tl_jax.interop import convert
    return _encoder_config(path, *convert.load_tl_config(path))


def _encoder_config(path: str, config, family: str):
    if family not in ("bert", "electra"):
        raise WarmStartError(f"{path} holds {family!r} weights, not a BERT encoder.")
    return getattr(config, "discriminator", config)  # an ELECTRA pair: the encoder that fine-tunes


def bert_weights(path: str):
    """`(BertConfig, flat params with the encoder under bert/)` of a tl_jax weights directory."""
    from tl_jax.interop import convert, safetensors_io
    config, params, family = convert.load_tl_params(path)
    config = _encoder_config(path, config, family)
    flat = safetensors_io.flatten_params(params)
    if not any(name.startswith("bert/") for name in flat):  # a headless BertModel tree
        flat = {"bert/" + name: value for name, value in flat.items()}
    return config, flat


# Whether the warm start prints its "[init_from]" lines (`say`); off inside `unreported`.
_REPORTING = contextvars.ContextVar("tl_jax_warm_start_reporting", default=True)


def say(line: str) -> None:
    """Prints one of the warm start's `[init_from]` lines, unless inside `unreported`."""
    if _REPORTING.get():
        print(line, flush=True)


def say_source_gone(task: str, key: str, source: str, kept_in: str) -> None:
    """On a resume that reads no weights from `source` (`key`, e.g. init_from): one line, on
    process 0, saying it is gone, when it is, and where the run's shape and vocabulary come
    from instead (`kept_in`)."""
    if source and not os.path.exists(source) and jax.process_index() == 0:
        print(f"[{task}] {key}={source} is gone: the run resumes from its checkpoint "
              f"({kept_in}).", flush=True)


@contextlib.contextmanager
def unreported():
    """Warm starts inside print nothing (what is wrong is raised as ever): for a second load,
    in one run, of weights whose load has been reported once (a probe's feature pass, then the
    trainer's)."""
    token = _REPORTING.set(False)
    try:
        yield
    finally:
        _REPORTING.reset(token)


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


def lora_taken_as_is(model_rank: int, model_alpha: float | None, source_rank: int,
                     source_alpha: float | None) -> bool:
    """Whether a model with LoRA of rank `model_rank` and `model_alpha` takes a run's trained
    LoRA pairs (rank `source_rank`, trained at `source_alpha`) as they are: only LoRA of the
    same rank and the same scale lora_alpha / rank computes what that run trained. Otherwise
    the pairs are folded into their kernels (`fold_lora_for`) and the model's own LoRA, if it
    has any, starts fresh (lora_b at zero) over them.

    An alpha of None is not known (a model given without its config, a checkpoint without a
    resolved_model): the ranks decide alone. A rank of 0 is no LoRA: nothing is taken."""
    if not (model_rank and source_rank) or model_rank != source_rank:
        return False
    return model_alpha is None or source_alpha is None or (
        model_alpha / model_rank == source_alpha / source_rank)


def fold_lora_for(params, source: dict, model_config, workdir: str, step: int) -> dict:
    """`source` (a workdir's flat params) with the LoRA pairs that `params` cannot take as they
    are folded into their kernels: W + lora_alpha / r * A @ B (`interop.bert.fold_lora`), at
    the scale the run trained with (its checkpoint's resolved_model lora_alpha, r the pair's
    rank). Left out as unused source tensors instead, the trained update was lost without a
    word: a model without LoRA (a probe with transfer.lora_rank=0, continued pretraining)
    computed the pretrained encoder beneath it.

    A pair is taken as it is where the model has a LoRA pair of the same shapes and, when
    `model_config` gives LoRA, the same scale (`lora_taken_as_is`). A model with LoRA of
    another rank or scale keeps its own pair fresh (lora_b starts at zero) over the folded
    kernel, so it starts from the function the run trained too.
    """
    pairs = [name[: -len("lora_a")] for name in source
             if name.endswith("/lora_a") and name[: -len("lora_a")] + "lora_b" in source]
    if not pairs:
        return source
    from tl_jax.interop import bert as hf_bert
    target = {checkpoint.path_str(path): tuple(leaf.shape)
              for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
    alpha = checkpoint.unshaped_model_fields(workdir, step).get("lora_alpha")
    # The model's scale, where its config gives LoRA (None: its pairs' shapes decide alone).
    model_alpha = model_config.lora_alpha if getattr(model_config, "lora_rank", 0) else None

    def taken_as_is(base):
        if base + "kernel" not in target:  # nothing to fold into: unused, as before
            return True
        # A pair of the run's shapes in the model is one of the run's rank.
        rank = source[base + "lora_a"].shape[1]
        return (all(target.get(base + leaf) == tuple(source[base + leaf].shape)
                    for leaf in ("lora_a", "lora_b"))
                and lora_taken_as_is(rank, model_alpha, rank, alpha))

    to_fold = [base for base in pairs if not taken_as_is(base)]
    if not to_fold:
        return source
    if alpha is None:
        raise WarmStartError(
            f"init_from={workdir!r} (step {step}) trained LoRA ({len(to_fold)} lora_a / lora_b "
            "pairs) that this model has no place for, but its checkpoint's config has no "
            "resolved_model to give its lora_alpha, so the update cannot be folded into the "
            "kernels at its scale; give this model LoRA of the run's rank and lora_alpha.")
    ranks = ", ".join(str(r) for r in sorted({source[b + "lora_a"].shape[1] for b in to_fold}))
    source, folded = hf_bert.fold_lora(source, alpha, keep=taken_as_is)
    why = ("this model has no LoRA there" if not any(b + "lora_a" in target for b in to_fold)
           else "this model's LoRA has another rank or scale and starts fresh")
    say(f"[init_from] merged {folded} LoRA pairs into their kernels (W + lora_alpha / rank "
        f"* A @ B, the run's lora_alpha {alpha:g}, rank {ranks}): {why}.")
    return source


# A bottleneck adapter's tensors (`models/layers.Adapter`, after attention and the FFN of a
# layer); group 1 ends at the layer that holds it.
ADAPTER_TENSOR = re.compile(r"^(.*/)(attention_adapter|mlp_adapter)/")


def adapter_size_of(shapes: dict) -> int:
    """The bottleneck width of the adapters among flat `{name: shape}` (0: none)."""
    for name, shape in shapes.items():
        if ADAPTER_TENSOR.match(name) and name.endswith("/down/kernel"):
            return int(shape[-1])  # (H, adapter_size)
    return 0


def check_adapters_taken(params, source: dict, where: str) -> None:
    """Refuses `source` when this model cannot take its trained bottleneck adapters as they are
    (it has none in a layer it takes from the source, or adapters of another size).

    LoRA can be folded into its kernel; an adapter cannot (down, nonlinearity, up, residual),
    and left out as an unused source tensor it was lost without a word: the model computed the
    encoder beneath it, which the run that trained it never had. Adapters of layers the model
    leaves out altogether (`model.num_layers`) stay unused, as the rest of those layers do.
    (A probe refuses another `transfer.adapter_size` itself, before reading its data.)"""
    target = {checkpoint.path_str(path): tuple(leaf.shape)
              for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
    in_model = {}  # layer prefix -> whether the model has that layer

    def layer_in_model(prefix):
        if prefix not in in_model:
            in_model[prefix] = any(name.startswith(prefix) for name in target)
        return in_model[prefix]

    left = [name for name, value in source.items()
            if (match := ADAPTER_TENSOR.match(name)) and layer_in_model(match.group(1))
            and target.get(name) != tuple(value.shape)]
    if not left:
        return
    size = adapter_size_of({name: value.shape for name, value in source.items()})
    own = adapter_size_of(target)
    raise WarmStartError(
        f"init_from={where} trained bottleneck adapters (adapter_size={size}; {len(left)} "
        f"attention_adapter / mlp_adapter tensors, e.g. {left[0]}) but this model has "
        + (f"adapters of size {own}" if own else "no adapters") + ". An adapter cannot be "
        "folded into the kernels (it is nonlinear), and without it the model would compute the "
        f"encoder beneath it, not the one that run trained: {_adapters_remedy(target, size)}.")


def _adapters_remedy(target: dict, size: int) -> str:
    """What to set when `check_adapters_taken` refuses a model (init_from trained adapters of
    `size`), in the keys of the config that builds it. The warm start is given the model's
    tensors, not its task, so they tell which: ELECTRA's have a generator/ beside the
    discriminator's bert/, BERT pretraining's an mlm_head/ (a probe refuses another
    transfer.adapter_size itself, and the fine-tuning configs read the adapters from
    init_from's checkpoint)."""
    if any(name.startswith("generator/") for name in target):
        # ElectraConfig is built from a name of electra.SIZES: no key gives it adapters.
        return ("ELECTRA pretraining builds its discriminator from a size name (model.size), "
                "which has no adapters, so set init_from to the encoder those adapters were "
                "trained on (that run's own init_from), or continue BERT pretraining from it "
                "(configs/bert_pretrain.py with model.size set to init_from, which builds them)")
    if any(name.startswith("mlm_head/") for name in target):
        return (f"set model.size to init_from, which copies its architecture, adapters of "
                f"size {size} included")
    return (f"give this model adapters of size {size} (a probe: transfer.adapter_size={size}, "
            "or 0, which builds init_from's)")


def warm_start(params, init_from: str, model_config=None, prefix_map: dict | None = None,
               only: str = ""):
    """Returns `params` with every matching tensor taken from `init_from`.

    `init_from` is a tl_jax workdir (newest good checkpoint) or a Hugging Face BERT or ELECTRA
    directory.
    `prefix_map` renames source prefixes first, e.g. `{"bert/": "encoder/"}` when a task model
    names its encoder differently from the pretraining model. With `only`, just the tensors
    under that prefix are taken (e.g. "bert/": a fine-tuned workdir's head stays behind).
    A workdir's LoRA pairs that the model has no same-shaped, same-scale LoRA for are folded
    into their kernels (`fold_lora_for`); its bottleneck adapters, which cannot be folded, are
    taken by same-sized adapters or refused (`check_adapters_taken`).
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
    if is_tl_workdir(init_from):
        source = fold_lora_for(params, source, model_config, init_from, step)
    check_adapters_taken(params, source, repr(init_from) + (
        f" (step {step})" if is_tl_workdir(init_from) else ""))
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
        say(line)
    return params
