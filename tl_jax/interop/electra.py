"""Hugging Face ELECTRA <-> tl_jax ELECTRA: configs, weight maps, import and export.

HF keeps ELECTRA's two halves as two models in two directories: the discriminator as
`ElectraForPreTraining` (google/electra-*-discriminator, what people fine-tune) and the
generator as `ElectraForMaskedLM` (google/electra-*-generator). Ours is one param tree
(`tl_jax/models/electra.py`); export writes

    out/              ElectraForPreTraining: config.json, model.safetensors, tokenizer files
    out/generator/    ElectraForMaskedLM (same tokenizer files)

and `load(out)` reads both back (the generator from `out/generator/` unless named).

    config, params, report = load("electra_dir")           # ElectraConfig, pretraining tree
    config, params, report = load_generator("electra_dir/generator")  # the generator alone
    export(params, config, "out/", tokenizer=tok)           # both directories
    bert_config = read_hf_config("electra_discriminator")   # for fine-tuning (init_from)
    params, report = init_from_hf(my_params, "electra_discriminator")

Names (HF -> tl_jax; the per-layer tensors are BERT's, see `interop/bert.py` for transforms):

    electra.embeddings.*                        bert/embeddings/*  (shared; the generator's copy
                                                must equal the discriminator's)
    electra.embeddings_project                  bert/embeddings_project | generator/embeddings_project
                                                (each half's, when embedding_size != its width)
    electra.encoder.layer.i.*                   bert/encoder/layer_i/* | generator/encoder/layer_i/*
    discriminator_predictions.dense             discriminator_head/dense
    discriminator_predictions.dense_prediction  discriminator_head/output
    generator_predictions.dense, .LayerNorm     generator/mlm_head/transform, transform_norm
    generator_lm_head.bias                      generator/mlm_head/output_bias
    generator_lm_head.weight                    tied to the word embeddings (checked, not stored)

A headless `ElectraModel` directory (what `ElectraModel.save_pretrained` writes: the same
encoder names without the `electra.` prefix) reads as a discriminator without its head, and
`export_encoder` writes one: how a factorised BERT encoder (a task model fine-tuned from
ELECTRA-Small) reaches HF, whose BERT has no `embeddings_project`.

Factorised embeddings (ELECTRA-Small: `embedding_size` 128, `hidden_size` 256) convert both
ways: the discriminator is then a `BertEncoder` with `embedding_size` set (see
`tl_jax/models/bert.py`), and a fine-tuning model built from `read_hf_config` has the projection.

What cannot be represented is refused, not approximated: a generator whose `embedding_size`
is not the discriminator's (the embeddings are shared), and a generator under a `hidden_act`
other than "gelu" (HF's generator head always uses gelu; ours uses the model's activation).
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import warnings
from typing import Optional

import numpy as np

from tl_jax.interop import LoadReport, check_field_types, read_config_json, safetensors_io
from tl_jax.interop import bert as hf_bert
from tl_jax.models.bert import BertConfig
from tl_jax.models.electra import ElectraConfig

MODEL_TYPE = "electra"
GENERATOR_SUBDIR = "generator"
DISCRIMINATOR_ARCH = "ElectraForPreTraining"
GENERATOR_ARCH = "ElectraForMaskedLM"
ENCODER_ARCH = "ElectraModel"  # headless: what a factorised task model's encoder exports as
_ENCODER_PREFIXES = ("embeddings.", "embeddings_project.", "encoder.")  # ElectraModel's names
_BUFFERS = ("electra.embeddings.position_ids", "electra.embeddings.token_type_ids")
_TIED_DECODER = "generator_lm_head.weight"
_DEFAULT_EMBEDDING_SIZE = 128  # transformers' ElectraConfig default, when config.json omits it


# ----------------------------------------------------------------------------- config


def read_hf_json(directory) -> tuple[dict, pathlib.Path]:
    """The config.json dict of a HF ELECTRA directory (clear errors for anything else)."""
    hf, config_file = read_config_json(directory)
    if hf.get("model_type") != MODEL_TYPE:
        raise ValueError(f"{config_file}: model_type={hf.get('model_type')!r}, expected "
                         f"{MODEL_TYPE!r}; this is not an ELECTRA checkpoint")
    return hf, config_file


def encoder_config_from_hf(hf: dict, source: str = "config.json") -> BertConfig:
    """The `BertConfig` of a HF ELECTRA config dict (either half), embedding width included."""
    check_field_types(hf, source, {"embedding_size": int})
    return hf_bert.config_from_hf(
        hf, source, model_type=MODEL_TYPE, name="ELECTRA",
        embedding_size=hf.get("embedding_size", _DEFAULT_EMBEDDING_SIZE))


def discriminator_config_from_hf(hf: dict, source: str = "config.json") -> BertConfig:
    """The discriminator's `BertConfig` (with `embedding_size` when its embeddings are
    factorised, as ELECTRA-Small's)."""
    return encoder_config_from_hf(hf, source)


def electra_config_from_hf(disc_hf: dict, gen_hf: dict, disc_source: str = "config.json",
                           gen_source: str = "generator/config.json") -> ElectraConfig:
    """The `ElectraConfig` of a discriminator + generator pair; what ours cannot share is an
    error naming the generator's config file."""
    disc = discriminator_config_from_hf(disc_hf, disc_source)
    gen = encoder_config_from_hf(gen_hf, gen_source)
    if gen.embedding_width != disc.embedding_width:
        raise ValueError(
            f"{gen_source}: embedding_size={gen.embedding_width}, but the generator shares the "
            f"discriminator's embeddings, which are {disc.embedding_width} wide ({disc_source})")
    for field in ("vocab_size", "max_position_embeddings", "type_vocab_size", "hidden_act",
                  "layer_norm_eps"):
        if getattr(gen, field) != getattr(disc, field):
            raise ValueError(f"{gen_source}: {field}={getattr(gen, field)!r} differs from the "
                             f"discriminator's {getattr(disc, field)!r} ({disc_source}); tl_jax's "
                             "generator shares them")
    _check_generator_activation(disc, gen_source)
    try:
        return ElectraConfig(discriminator=disc, generator_hidden_size=gen.hidden_size,
                             generator_num_heads=gen.num_heads,
                             generator_intermediate_size=gen.intermediate_size,
                             generator_num_layers=gen.num_layers)
    except ValueError as e:
        raise ValueError(f"{gen_source}: {e}") from e


def _check_generator_activation(config: BertConfig, where: str) -> None:
    if config.hidden_act != "gelu":
        raise ValueError(
            f"{where}: hidden_act={config.hidden_act!r}; HF's ElectraForMaskedLM always applies "
            "'gelu' in its prediction head while tl_jax's generator head uses the model's "
            "activation, so the generator's logits would differ. Only 'gelu' converts exactly.")


def _hf_config(config: BertConfig, architecture: str, pad_token_id: int) -> dict:
    return {
        "architectures": [architecture],
        "model_type": MODEL_TYPE,
        "vocab_size": config.vocab_size,
        "embedding_size": config.embedding_width,
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "intermediate_size": config.intermediate_size,
        "max_position_embeddings": config.max_position_embeddings,
        "type_vocab_size": config.type_vocab_size,
        "hidden_dropout_prob": config.dropout_rate,
        "attention_probs_dropout_prob": config.attention_dropout_rate,
        "layer_norm_eps": config.layer_norm_eps,
        "initializer_range": config.initializer_range,
        "hidden_act": config.hidden_act,
        "pad_token_id": pad_token_id,
        "tie_word_embeddings": True,
    }


def encoder_config_to_hf(config: BertConfig, pad_token_id: int = 0) -> dict:
    """A HF `config.json` dict for a headless encoder (`ElectraModel`)."""
    return _hf_config(config, ENCODER_ARCH, pad_token_id)


def discriminator_config_to_hf(config: BertConfig, pad_token_id: int = 0) -> dict:
    """A HF `config.json` dict for the discriminator (`ElectraForPreTraining`)."""
    return _hf_config(config, DISCRIMINATOR_ARCH, pad_token_id)


def generator_config_to_hf(config: ElectraConfig, pad_token_id: int = 0) -> dict:
    """A HF `config.json` dict for the generator (`ElectraForMaskedLM`)."""
    return _hf_config(config.generator, GENERATOR_ARCH, pad_token_id)


# ----------------------------------------------------------------------------- weight map


@dataclasses.dataclass(frozen=True)
class _Entry:
    hf_name: str
    tl_path: str
    hf_shape: tuple
    tl_shape: tuple
    kind: str  # a transform of interop/bert.py: copy, linear, heads_in, heads_out, heads_bias


def _linear(hf_name: str, tl_path: str, out: int, inp: int) -> list[_Entry]:
    return [_Entry(f"{hf_name}.weight", f"{tl_path}/kernel", (out, inp), (inp, out), "linear"),
            _Entry(f"{hf_name}.bias", f"{tl_path}/bias", (out,), (out,), "copy")]


def _layer_norm(hf_name: str, tl_path: str, width: int) -> list[_Entry]:
    return [_Entry(f"{hf_name}.weight", f"{tl_path}/scale", (width,), (width,), "copy"),
            _Entry(f"{hf_name}.bias", f"{tl_path}/bias", (width,), (width,), "copy")]


def _bert_entries(config: BertConfig, tl_root: str, embeddings: bool) -> list[_Entry]:
    """BERT's entries for the embeddings (or not) and the layers, named as in ElectraModel,
    with `config`'s embeddings_project (under `tl_root`) when it is factorised."""
    out = []
    for e in hf_bert.tensor_map(config):
        is_embedding = e.hf_name.startswith("embeddings.")
        if not (e.hf_name.startswith("encoder.") or (embeddings and is_embedding)):
            continue  # pooler and the BERT heads: ELECTRA has neither
        path = e.tl_path if is_embedding else tl_root + e.tl_path[len("bert/"):]
        out.append(_Entry("electra." + e.hf_name, path, e.hf_shape,
                          hf_bert.tl_shape(e, config), e.kind))
    if config.factorised:  # (H, E) in HF: embedding width in, the layers' width out
        out += _linear("electra.embeddings_project", tl_root + "embeddings_project",
                       config.hidden_size, config.embedding_width)
    return out


def discriminator_tensor_map(config: BertConfig) -> list[_Entry]:
    """Every `ElectraForPreTraining` tensor with its tl_jax path, shapes and transform."""
    H = config.hidden_size
    return (_bert_entries(config, "bert/", embeddings=True)
            + _linear("discriminator_predictions.dense", "discriminator_head/dense", H, H)
            + _linear("discriminator_predictions.dense_prediction", "discriminator_head/output",
                      1, H))


def encoder_tensor_map(config: BertConfig) -> list[_Entry]:
    """Every `ElectraModel` tensor (named as `ElectraModel.save_pretrained` names them: no
    `electra.` prefix) with its tl_jax path (`bert/...`), shapes and transform."""
    return [dataclasses.replace(e, hf_name=e.hf_name[len("electra."):])
            for e in _bert_entries(config, "bert/", embeddings=True)]


def generator_tensor_map(config: ElectraConfig) -> list[_Entry]:
    """Every `ElectraForMaskedLM` tensor (but the tied decoder) with its tl_jax path."""
    g, V = config.generator, config.discriminator.vocab_size
    E = g.embedding_width  # the shared embeddings' width
    entries = _bert_entries(config.discriminator, "bert/", embeddings=True)
    entries = [e for e in entries if e.tl_path.startswith("bert/embeddings/")]
    entries += _bert_entries(g, "generator/", embeddings=False)  # with its embeddings_project
    entries += _linear("generator_predictions.dense", "generator/mlm_head/transform", E,
                       g.hidden_size)
    entries += _layer_norm("generator_predictions.LayerNorm", "generator/mlm_head/transform_norm",
                           E)
    entries.append(_Entry("generator_lm_head.bias", "generator/mlm_head/output_bias", (V,), (V,),
                          "copy"))
    return entries


def _normalise_names(tensors: dict) -> tuple[dict, dict]:
    """TF-era `LayerNorm.gamma/beta` -> `weight/bias`, and a headless `ElectraModel`'s names
    (`embeddings.*`, `encoder.*`) -> `electra.*`; returns (tensors, new name -> original)."""
    renamed, original = {}, {}
    for name, value in tensors.items():
        new = name.replace("LayerNorm.gamma", "LayerNorm.weight").replace(
            "LayerNorm.beta", "LayerNorm.bias")
        if new.startswith(_ENCODER_PREFIXES) and "electra." + name not in tensors:
            new = "electra." + new
        renamed[new], original[new] = value, name
    return renamed, original


def params_from_hf_tensors(tensors: dict, entries: list[_Entry], source: str = "checkpoint"):
    """Flat tl_jax params from HF tensors by `entries`; returns `(flat, report)`.

    Shapes are checked before anything is transposed; absent tensors go to `report.missing`
    (as tl_jax paths), tensors no entry names to `report.unused`.
    """
    tensors, original = _normalise_names(tensors)
    report = LoadReport(source=source)
    flat = {}
    for entry in entries:
        if entry.hf_name not in tensors:
            report.missing.append(entry.tl_path)
            continue
        value = np.asarray(tensors.pop(entry.hf_name))
        if value.shape != entry.hf_shape:
            raise ValueError(f"{source}: tensor {original[entry.hf_name]!r} has shape "
                             f"{value.shape}, but config.json implies {entry.hf_shape} (tl_jax "
                             f"{entry.tl_path})")
        flat[entry.tl_path] = hf_bert.to_tl(entry.kind, value.astype(np.float32),
                                            entry.tl_shape)
        report.used.append(original[entry.hf_name])
    layer = "electra.encoder.layer."
    num_layers = len({e.hf_name[len(layer):].split(".")[0] for e in entries
                      if e.hf_name.startswith(layer)})
    hf_bert.check_no_extra_layers(tensors, layer, num_layers, source)
    for name in _BUFFERS:  # arange / zeros buffers the model recomputes
        if name in tensors:
            tensors.pop(name)
            report.derived.append(original[name])
    words = flat.get("bert/embeddings/word_embeddings/embedding")
    if _TIED_DECODER in tensors:
        decoder = np.asarray(tensors.pop(_TIED_DECODER))
        if words is not None and decoder.shape == words.shape and np.array_equal(decoder, words):
            report.derived.append(original[_TIED_DECODER])
        else:  # an untied decoder cannot be represented: say so rather than drop it silently
            warnings.warn(f"{source}: {_TIED_DECODER} differs from the word embeddings; tl_jax "
                          "ties them, so the checkpoint's decoder weight is not used")
            report.unused.append(original[_TIED_DECODER])
    report.unused = sorted(report.unused + [original[name] for name in tensors])
    return flat, report


def params_to_hf_tensors(flat: dict, entries: list[_Entry]) -> dict:
    """HF tensors from flat tl_jax params by `entries`; a missing or misshapen param is an error."""
    out = {}
    for entry in entries:
        if entry.tl_path not in flat:
            raise ValueError(f"cannot export: tl_jax param {entry.tl_path!r} is missing")
        value = np.asarray(flat[entry.tl_path], dtype=np.float32)
        if value.shape != entry.tl_shape:
            raise ValueError(f"cannot export: tl_jax param {entry.tl_path!r} has shape "
                             f"{value.shape}, config implies {entry.tl_shape}")
        out[entry.hf_name] = hf_bert.to_hf(entry.kind, value, entry.hf_shape)
    return out


def config_from_params(params, **fields) -> ElectraConfig:
    """The `ElectraConfig` implied by an ELECTRA pretraining tree's shapes; `fields` give what
    shapes cannot (hidden_act, layer_norm_eps, dropout rates) and apply to both halves."""
    flat = safetensors_io.flatten_params(params)
    if not any(p.startswith("generator/encoder/") for p in flat):
        raise ValueError("not an ELECTRA pretraining tree: no generator/encoder/ params")
    disc = hf_bert.config_from_params(
        {p: v for p, v in flat.items() if p.startswith("bert/")}, **fields)
    layers = {int(p[len("generator/encoder/layer_"):].split("/")[0])
              for p in flat if p.startswith("generator/encoder/layer_")}
    query = flat["generator/encoder/layer_0/attention/query/kernel"]  # (Hg, heads, kv)
    return ElectraConfig(
        discriminator=disc, generator_hidden_size=query.shape[0],
        generator_num_heads=query.shape[1],
        generator_intermediate_size=flat[
            "generator/encoder/layer_0/mlp/intermediate/kernel"].shape[1],
        generator_num_layers=len(layers))


# ----------------------------------------------------------------------------- directories


def read_hf_config(directory) -> BertConfig:
    """The discriminator's `BertConfig` of a HF ELECTRA directory: the encoder that fine-tunes."""
    hf, config_file = read_hf_json(directory)
    return discriminator_config_from_hf(hf, str(config_file))


def load_discriminator(directory):
    """`(BertConfig, flat params, LoadReport)` of a HF ELECTRA discriminator directory
    (`ElectraForPreTraining`, or a headless `ElectraModel`).

    The flat params are `bert/...` (the encoder) and `discriminator_head/...` when the checkpoint
    has the head; a missing encoder tensor is an error, a missing head is in `report.missing`.
    """
    config = read_hf_config(directory)
    tensors, weight_file = safetensors_io.read_hf_tensors(directory)
    flat, report = params_from_hf_tensors(tensors, discriminator_tensor_map(config),
                                          source=str(weight_file))
    encoder_missing = [p for p in report.missing if p.startswith("bert/")]
    if encoder_missing:
        raise ValueError(f"{weight_file} lacks encoder tensors (tl_jax paths): "
                         f"{encoder_missing[:10]}{' ...' if len(encoder_missing) > 10 else ''}")
    return config, flat, report


def load_generator(directory):
    """`(ElectraConfig, params, LoadReport)` of a HF ELECTRA generator directory
    (`ElectraForMaskedLM`) alone: what predicts masked tokens (fill-mask).

    params hold the embeddings (`bert/embeddings/`, which the generator shares with its
    discriminator) and `generator/`. With no discriminator to describe, the config's
    `discriminator` is the generator's own shape: the tree runs `ElectraForPreTraining.generate`,
    nothing else. Every generator tensor must be there; a checkpoint without the MLM head
    (`generator_predictions`, `generator_lm_head`) is an error naming the weights file.
    """
    hf, config_file = read_hf_json(directory)
    gen = encoder_config_from_hf(hf, str(config_file))
    _check_generator_activation(gen, str(config_file))
    config = ElectraConfig(discriminator=gen, generator_hidden_size=gen.hidden_size,
                           generator_num_heads=gen.num_heads,
                           generator_intermediate_size=gen.intermediate_size,
                           generator_num_layers=gen.num_layers)
    tensors, weight_file = safetensors_io.read_hf_tensors(directory)
    flat, report = params_from_hf_tensors(tensors, generator_tensor_map(config),
                                          source=str(weight_file))
    if report.missing:
        head = [p for p in report.missing if p.startswith("generator/mlm_head/")]
        what = ("the generator's MLM head (generator_predictions, generator_lm_head): it is not "
                "an ElectraForMaskedLM checkpoint" if head else "generator tensors")
        raise ValueError(f"{weight_file} lacks {what} (tl_jax paths: {report.missing[:6]}"
                         f"{' ...' if len(report.missing) > 6 else ''})")
    return config, safetensors_io.unflatten_params(flat), report


def load(directory, generator_directory=None):
    """Reads a HF ELECTRA pair into `(ElectraConfig, params, LoadReport)`: the whole
    `ElectraForPreTraining` tree of `tl_jax/models/electra.py`.

    directory: the discriminator (`ElectraForPreTraining`); generator_directory: the generator
    (`ElectraForMaskedLM`), by default `directory/generator`. Every tensor must be there: a
    pretraining model cannot continue from half of its weights. The generator's copy of the
    shared embeddings must equal the discriminator's (ELECTRA trains one table); a copy that
    differs is a warning and the discriminator's is kept.
    """
    directory = pathlib.Path(directory)
    gen_dir = pathlib.Path(generator_directory or directory / GENERATOR_SUBDIR)
    disc_hf, disc_file = read_hf_json(directory)
    if not (gen_dir / "config.json").exists():
        raise FileNotFoundError(
            f"{gen_dir} holds no ELECTRA generator (no config.json); the pretraining model needs "
            "both halves. Pass generator_directory=, or use read_hf_config / init_from_hf for "
            "the discriminator alone.")
    gen_hf, gen_file = read_hf_json(gen_dir)
    config = electra_config_from_hf(disc_hf, gen_hf, str(disc_file), str(gen_file))
    _, flat, report = load_discriminator(directory)
    if report.missing:
        raise ValueError(f"{report.source} lacks the discriminator head (tl_jax paths): "
                         f"{report.missing}")
    tensors, gen_weights = safetensors_io.read_hf_tensors(gen_dir)
    gen_flat, gen_report = params_from_hf_tensors(tensors, generator_tensor_map(config),
                                                  source=str(gen_weights))
    if gen_report.missing:
        raise ValueError(f"{gen_weights} lacks generator tensors (tl_jax paths): "
                         f"{gen_report.missing[:10]}")
    for path, value in gen_flat.items():
        if path.startswith("bert/embeddings/"):
            if not np.array_equal(value, flat[path]):
                warnings.warn(f"{gen_weights}: the generator's {path} differs from the "
                              f"discriminator's ({report.source}); tl_jax shares one table and "
                              "keeps the discriminator's")
            continue
        flat[path] = value
    report.source = f"{report.source} + {gen_weights}"
    report.used += [f"{GENERATOR_SUBDIR}:{n}" for n in gen_report.used]
    report.derived += [f"{GENERATOR_SUBDIR}:{n}" for n in gen_report.derived]
    report.unused += [f"{GENERATOR_SUBDIR}:{n}" for n in gen_report.unused]
    return config, safetensors_io.unflatten_params(flat), report


def export(params, config: ElectraConfig, directory, *, tokenizer=None,
           with_generator: bool = True) -> pathlib.Path:
    """Writes the discriminator as `ElectraForPreTraining` into `directory` and (with_generator)
    the generator as `ElectraForMaskedLM` into `directory/generator`, each with config.json,
    model.safetensors and (tokenizer: a directory of tokenizer files or a tokenizer object)
    tokenizer files.

    params: the `ElectraForPreTraining` tree (a tree without `generator/` exports with
    with_generator=False).
    """
    directory = pathlib.Path(directory)
    disc = config.discriminator
    if disc.adapter_size or disc.lora_rank:
        raise ValueError("HF ELECTRA has no adapters or LoRA: export a model without them")
    flat = safetensors_io.flatten_params(params)
    disc_tensors = params_to_hf_tensors(flat, discriminator_tensor_map(disc))
    gen_entries = generator_tensor_map(config) if with_generator else []
    taken = {e.tl_path for e in discriminator_tensor_map(disc)} | {e.tl_path for e in gen_entries}
    left = sorted(p for p in flat if p not in taken
                  and (with_generator or not p.startswith("generator/")))
    if left:
        raise ValueError(f"cannot export: tl_jax params with no HF ELECTRA name: {left[:10]}")
    if with_generator:
        _check_generator_activation(disc, "cannot export the generator")
        gen_tensors = params_to_hf_tensors(flat, gen_entries)
    outputs = [(directory, discriminator_config_to_hf(disc), disc_tensors)]
    if with_generator:
        outputs.append((directory / GENERATOR_SUBDIR, generator_config_to_hf(config),
                        gen_tensors))
    for out_dir, hf_config, tensors in outputs:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
        safetensors_io.write_safetensors(out_dir / "model.safetensors", tensors)
        if tokenizer is not None:
            hf_bert.write_tokenizer(tokenizer, out_dir, disc.vocab_size,
                                    disc.max_position_embeddings)
    return directory


def export_encoder(params, config: BertConfig, directory, *, tokenizer=None) -> pathlib.Path:
    """Writes a BERT encoder as a headless HF `ElectraModel` (config.json with `embedding_size`,
    model.safetensors, tokenizer files): the HF model of a factorised encoder, whose
    `embeddings_project` HF BERT cannot hold.

    params: the encoder under `bert/` (a `BertModel`/`BertEncoder` tree is taken too); any other
    param (a task head, a pooler: ElectraModel has none) is an error: choose what to export
    before calling this. LoRA is merged
    into its kernels; adapters, which HF ELECTRA has no place for, are an error.
    """
    directory = pathlib.Path(directory)
    if config.adapter_size:
        raise ValueError("HF ELECTRA has no adapters: export a model without them")
    flat = safetensors_io.flatten_params(params)
    if not any(p.startswith("bert/") for p in flat):
        flat = {"bert/" + p: v for p, v in flat.items()}
    params, config = hf_bert.merge_lora(safetensors_io.unflatten_params(flat), config)
    flat = safetensors_io.flatten_params(params)
    entries = encoder_tensor_map(config)
    taken = {e.tl_path for e in entries}
    left = sorted(p for p in flat if p not in taken)
    if left:
        raise ValueError(f"cannot export as ElectraModel: tl_jax params with no HF name: "
                         f"{left[:10]}")
    tensors = params_to_hf_tensors(flat, entries)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(
        json.dumps(encoder_config_to_hf(config), indent=2) + "\n")
    safetensors_io.write_safetensors(directory / "model.safetensors", tensors)
    if tokenizer is not None:
        hf_bert.write_tokenizer(tokenizer, directory, config.vocab_size,
                                config.max_position_embeddings)
    return directory


def load_pretrained(directory):
    """Family-table interface: `(ElectraConfig, pretraining tree)` when `directory/generator`
    holds the generator, else `(BertConfig, {bert, discriminator_head})`: the discriminator."""
    directory = pathlib.Path(directory)
    if (directory / GENERATOR_SUBDIR / "config.json").exists():
        config, params, report = load(directory)
        _warn_unused(report)
        return config, params
    config, flat, report = load_discriminator(directory)
    headless = ENCODER_ARCH in (read_hf_json(directory)[0].get("architectures") or [])
    if report.missing and not headless:  # an ElectraModel has no head to miss
        warnings.warn(f"{report.source}: no discriminator head; the weights hold the encoder only")
    _warn_unused(report)
    return config, safetensors_io.unflatten_params(flat)


def _warn_unused(report) -> None:
    # As BERT's convert lists them: a task head (classifier.*) must not vanish without a word.
    if report.unused:
        warnings.warn(f"{report.source}: {len(report.unused)} tensor(s) have no place in the "
                      f"tl_jax ELECTRA model and were not converted: {report.unused[:10]}"
                      f"{' ...' if len(report.unused) > 10 else ''}")


def save_pretrained(directory, config, params) -> None:
    """Family-table interface: the inverse of `load_pretrained` (a discriminator without its
    head, as a headless `ElectraModel` directory loads, exports as `ElectraModel`)."""
    if isinstance(config, ElectraConfig):
        export(params, config, directory)
        return
    flat = safetensors_io.flatten_params(params)
    entries = discriminator_tensor_map(config)
    if not any(p.startswith("discriminator_head/") for p in flat):
        export_encoder(params, config, directory)  # an encoder alone: a headless ElectraModel
        return
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(
        json.dumps(discriminator_config_to_hf(config), indent=2) + "\n")
    safetensors_io.write_safetensors(directory / "model.safetensors",
                                     params_to_hf_tensors(flat, entries))


# ----------------------------------------------------------------------------- init_from


def load_flat_params(directory, model_config: Optional[BertConfig] = None) -> dict:
    """The discriminator's tensors as flat tl_jax params (`bert/...`, `discriminator_head/...`)
    for name-and-shape warm starts; an architecture that differs from `model_config`'s is an
    error (as `interop.bert.load_flat_params`)."""
    config, flat, _ = load_discriminator(directory)
    if model_config is not None:
        diff = hf_bert.architecture_differences(model_config, config)
        if diff:
            raise ValueError(f"{directory}: checkpoint architecture differs from the model's: "
                             + "; ".join(diff))
    return flat


def init_from_hf(params, hf_dir, *, warn: bool = True):
    """Copies a HF ELECTRA discriminator into an initialised tl_jax param tree; returns
    `(params, report)`, as `interop.bert.init_from_hf` does for BERT.

    The encoder goes wherever the tree holds its BERT encoder (a classifier's `bert/`); the
    discriminator head is taken when the tree has `discriminator_head/` beside the encoder (an
    ELECTRA pretraining tree). The rest (a pooler: ELECTRA trains none; a task head) keeps its
    initial values and is listed in `report.missing`. A shape mismatch is an error.
    """
    _, source, report = load_discriminator(hf_dir)
    hf_name = {e.tl_path: e.hf_name for e in discriminator_tensor_map(read_hf_config(hf_dir))}
    return hf_bert.merge_encoder_params(params, source, report, hf_name, where=report.source,
                                        hf_dir=hf_dir, warn=warn)
