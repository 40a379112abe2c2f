"""Hugging Face BERT <-> tl_jax BERT: configs, weight maps, import and export.

Tokenizer loading/writing lives in `bert_tokenizer.py` and is re-exported here.

    config, params, report = load("path/to/hf_bert")          # BertForPreTraining tree
    print(report)                                              # used / unused / missing tensors
    export(params, config, "out/", with_heads=True)            # BertForPreTraining.from_pretrained
    params, report = init_from_hf(my_params, "path/to/hf_bert")  # merge into any tree with BERT in it

The weight map is one table (`tensor_map`) of `(hf_name, tl_path, transform)`; each transform is
a transpose and/or reshape, so import and export are exact inverses. HF `nn.Linear` weights are
`(out, in)`; ours are `(in, out)`, and attention projections keep a separate heads axis:
query/key/value kernels `(E, heads, kv)` and the output kernel `(heads, kv, E)`.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import warnings
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from tl_jax.interop import (LoadReport, check_field_types, check_not_a_workdir, read_config_json,
                           safetensors_io)
from tl_jax.interop.bert_tokenizer import (  # noqa: F401  (re-exported: one import for users)
    load_tl_tokenizer, load_tokenizer, load_tokenizer_for, write_tokenizer)
from tl_jax.models import bert as bert_model
from tl_jax.models.bert import BertConfig

MODEL_TYPE = "bert"
# Buffers and tied copies that carry no information of their own.
_POSITION_IDS = "embeddings.position_ids"
_TIED_DECODER = "cls.predictions.decoder.weight"
TIED_DECODER_BIAS = "cls.predictions.decoder.bias"
# The JSON type of every config.json field `config_from_hf` reads.
HF_FIELD_TYPES = {
    "vocab_size": int, "hidden_size": int, "num_hidden_layers": int, "num_attention_heads": int,
    "intermediate_size": int, "max_position_embeddings": int, "type_vocab_size": int,
    "hidden_dropout_prob": float, "attention_probs_dropout_prob": float,
    "layer_norm_eps": float, "initializer_range": float, "hidden_act": str,
    "position_embedding_type": str,
}


# ----------------------------------------------------------------------------- config


def config_from_hf(hf: dict, source: str = "config.json", *, model_type: str = MODEL_TYPE,
                   name: str = "BERT", **fields) -> BertConfig:
    """A `BertConfig` from a HF BERT `config.json` dict; unsupported variants are errors.

    Other BERT-shaped families (ELECTRA) pass their `model_type`, their `name` for the errors,
    and the `BertConfig` fields of their own (`embedding_size`)."""
    article = "an" if name[:1] in "AEIOU" else "a"
    check_not_a_workdir(hf, source)
    if hf.get("model_type") != model_type:
        raise ValueError(
            f"{source}: model_type={hf.get('model_type')!r}, expected {model_type!r}; this is "
            f"not {article} {name} checkpoint"
        )
    check_field_types(hf, source, HF_FIELD_TYPES)
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"{source}: position_embedding_type="
                         f"{hf['position_embedding_type']!r} is not supported (only 'absolute')")
    if hf.get("is_decoder") or hf.get("add_cross_attention"):
        raise ValueError(f"{source}: decoder / cross-attention {name} variants are not supported")
    try:
        return BertConfig(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=hf["num_attention_heads"],
            intermediate_size=hf["intermediate_size"],
            max_position_embeddings=hf.get("max_position_embeddings", 512),
            type_vocab_size=hf.get("type_vocab_size", 2),
            dropout_rate=hf.get("hidden_dropout_prob", 0.1),
            attention_dropout_rate=hf.get("attention_probs_dropout_prob", 0.1),
            layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
            initializer_range=hf.get("initializer_range", 0.02),
            hidden_act=hf.get("hidden_act", "gelu"),
            **fields,
        )
    except KeyError as e:
        raise ValueError(f"{source}: missing {name} config field {e.args[0]!r}") from e
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from e


def config_to_hf(config: BertConfig, with_heads: bool = True, pad_token_id: int = 0) -> dict:
    """A HF `config.json` dict for `config`."""
    return {
        "architectures": ["BertForPreTraining" if with_heads else "BertModel"],
        "model_type": MODEL_TYPE,
        "vocab_size": config.vocab_size,
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
        "position_embedding_type": "absolute",
        "pad_token_id": pad_token_id,
        "tie_word_embeddings": True,
    }


# ----------------------------------------------------------------------------- weight map


@dataclasses.dataclass(frozen=True)
class _Entry:
    hf_name: str  # without the "bert." prefix for encoder tensors
    tl_path: str  # in the BertForPreTraining tree ("bert/..." or head paths)
    hf_shape: tuple
    kind: str  # one of _TO_TL


def to_tl(kind: str, x: np.ndarray, tl_shape: tuple) -> np.ndarray:
    """One HF tensor in tl_jax's layout (`kind` from the tensor map; `tl_shape` its shape)."""
    if kind == "copy":
        return x
    if kind in ("linear", "heads_in", "heads_out"):
        return np.ascontiguousarray(x.T).reshape(tl_shape)  # (in, out) then split heads
    if kind == "heads_bias":
        return x.reshape(tl_shape)  # (heads, kv)
    raise AssertionError(kind)


def to_hf(kind: str, x: np.ndarray, hf_shape: tuple) -> np.ndarray:
    """One tl_jax param in HF's layout: the inverse of `to_tl`."""
    if kind == "copy":
        return x
    if kind in ("linear", "heads_in", "heads_out"):
        out, inp = hf_shape
        return np.ascontiguousarray(x.reshape(inp, out).T)  # merge heads, then (out, in)
    if kind == "heads_bias":
        return x.reshape(hf_shape)
    raise AssertionError(kind)


def tensor_map(config: BertConfig) -> list[_Entry]:
    """Every HF BERT tensor with its tl_jax path, HF shape and transform.

    A factorised config (`embedding_size`, which HF BERT does not have) gets its embedding and
    MLM-transform widths here, for interop/electra.py, which adds the projection itself;
    exporting it as BERT is refused in `params_to_hf_tensors`.
    """
    E, I, V = config.hidden_size, config.intermediate_size, config.vocab_size
    W = config.embedding_width  # = E unless factorised
    entries = [
        _Entry("embeddings.word_embeddings.weight", "bert/embeddings/word_embeddings/embedding",
               (V, W), "copy"),
        _Entry("embeddings.position_embeddings.weight",
               "bert/embeddings/position_embeddings/embedding",
               (config.max_position_embeddings, W), "copy"),
        _Entry("embeddings.token_type_embeddings.weight",
               "bert/embeddings/token_type_embeddings/embedding", (config.type_vocab_size, W),
               "copy"),
        _Entry("embeddings.LayerNorm.weight", "bert/embeddings/norm/scale", (W,), "copy"),
        _Entry("embeddings.LayerNorm.bias", "bert/embeddings/norm/bias", (W,), "copy"),
    ]
    for i in range(config.num_layers):
        hf, tl = f"encoder.layer.{i}", f"bert/encoder/layer_{i}"
        for proj in ("query", "key", "value"):
            entries += [
                _Entry(f"{hf}.attention.self.{proj}.weight", f"{tl}/attention/{proj}/kernel",
                       (E, E), "heads_in"),
                _Entry(f"{hf}.attention.self.{proj}.bias", f"{tl}/attention/{proj}/bias",
                       (E,), "heads_bias"),
            ]
        entries += [
            _Entry(f"{hf}.attention.output.dense.weight", f"{tl}/attention/out/kernel", (E, E),
                   "heads_out"),
            _Entry(f"{hf}.attention.output.dense.bias", f"{tl}/attention/out/bias", (E,), "copy"),
            _Entry(f"{hf}.attention.output.LayerNorm.weight",
                   f"{tl}/attention_output_norm/scale", (E,), "copy"),
            _Entry(f"{hf}.attention.output.LayerNorm.bias", f"{tl}/attention_output_norm/bias",
                   (E,), "copy"),
            _Entry(f"{hf}.intermediate.dense.weight", f"{tl}/mlp/intermediate/kernel", (I, E),
                   "linear"),
            _Entry(f"{hf}.intermediate.dense.bias", f"{tl}/mlp/intermediate/bias", (I,), "copy"),
            _Entry(f"{hf}.output.dense.weight", f"{tl}/mlp/output/kernel", (E, I), "linear"),
            _Entry(f"{hf}.output.dense.bias", f"{tl}/mlp/output/bias", (E,), "copy"),
            _Entry(f"{hf}.output.LayerNorm.weight", f"{tl}/mlp_output_norm/scale", (E,), "copy"),
            _Entry(f"{hf}.output.LayerNorm.bias", f"{tl}/mlp_output_norm/bias", (E,), "copy"),
        ]
    entries += [
        _Entry("pooler.dense.weight", "bert/pooler/dense/kernel", (E, E), "linear"),
        _Entry("pooler.dense.bias", "bert/pooler/dense/bias", (E,), "copy"),
        # Heads: HF names are absolute (no "bert." prefix).
        _Entry("cls.predictions.transform.dense.weight", "mlm_head/transform/kernel", (W, E),
               "linear"),
        _Entry("cls.predictions.transform.dense.bias", "mlm_head/transform/bias", (W,), "copy"),
        _Entry("cls.predictions.transform.LayerNorm.weight", "mlm_head/transform_norm/scale",
               (W,), "copy"),
        _Entry("cls.predictions.transform.LayerNorm.bias", "mlm_head/transform_norm/bias",
               (W,), "copy"),
        _Entry("cls.predictions.bias", "mlm_head/output_bias", (V,), "copy"),
        _Entry("cls.seq_relationship.weight", "nsp_head/dense/kernel", (2, E), "linear"),
        _Entry("cls.seq_relationship.bias", "nsp_head/dense/bias", (2,), "copy"),
    ]
    return entries


def _is_head(entry: _Entry) -> bool:
    return entry.hf_name.startswith("cls.")


def normalise_names(tensors: dict) -> tuple[dict, dict]:
    """Strips the `bert.` prefix and renames TF-era `gamma`/`beta`; returns (tensors, new->old)."""
    renamed, original = {}, {}
    for name, value in tensors.items():
        new = name.removeprefix("bert.")
        if ".LayerNorm." in new:
            new = new.replace("LayerNorm.gamma", "LayerNorm.weight")
            new = new.replace("LayerNorm.beta", "LayerNorm.bias")
        renamed[new] = value
        original[new] = name
    return renamed, original


def params_from_hf_tensors(tensors: dict, config: BertConfig, source: str = "checkpoint"):
    """Flat tl_jax params (`/` paths of the BertForPreTraining tree) from HF tensors.

    Returns `(flat_params, report)`; `report.missing` lists tl_jax paths not in the checkpoint.
    Shapes are checked against `config` before anything is transposed.
    """
    tensors, original = normalise_names(tensors)
    report = LoadReport(source=source)
    flat = {}
    for entry in tensor_map(config):
        if entry.hf_name not in tensors:
            report.missing.append(entry.tl_path)
            continue
        value = np.asarray(tensors.pop(entry.hf_name))
        if value.shape != entry.hf_shape:
            raise ValueError(
                f"{source}: tensor {original[entry.hf_name]!r} has shape {value.shape}, but "
                f"config.json implies {entry.hf_shape} (tl_jax {entry.tl_path})"
            )
        flat[entry.tl_path] = to_tl(entry.kind, value.astype(np.float32),
                                    tl_shape(entry, config))
        report.used.append(original[entry.hf_name])

    check_no_extra_layers(tensors, "encoder.layer.", config.num_layers, source)
    if _POSITION_IDS in tensors:  # a buffer (arange), recomputed by the model
        tensors.pop(_POSITION_IDS)
        report.derived.append(original[_POSITION_IDS])
    words = flat.get("bert/embeddings/word_embeddings/embedding")
    if _TIED_DECODER in tensors:
        decoder = np.asarray(tensors[_TIED_DECODER])
        if words is not None and decoder.shape == words.shape and np.array_equal(decoder, words):
            tensors.pop(_TIED_DECODER)
            report.derived.append(original[_TIED_DECODER])
        else:  # an untied decoder cannot be represented: say so rather than drop it silently
            warnings.warn(f"{source}: {_TIED_DECODER} differs from the word embeddings; tl_jax "
                          "ties them, so the checkpoint's decoder weight is not used")
    if TIED_DECODER_BIAS in tensors:
        bias = np.asarray(tensors[TIED_DECODER_BIAS])
        if "mlm_head/output_bias" not in flat and bias.shape == (config.vocab_size,):
            flat["mlm_head/output_bias"] = bias.astype(np.float32)
            report.missing.remove("mlm_head/output_bias")
            report.used.append(original[TIED_DECODER_BIAS])
            tensors.pop(TIED_DECODER_BIAS)
        elif np.array_equal(bias, flat.get("mlm_head/output_bias")):
            report.derived.append(original[TIED_DECODER_BIAS])
            tensors.pop(TIED_DECODER_BIAS)
    report.unused = sorted(original[name] for name in tensors)
    return flat, report


def check_no_extra_layers(names, prefix: str, num_layers: int, source: str) -> None:
    """An error when the checkpoint (`names`: its tensors left over after mapping) holds encoder
    layers (`prefix` + index) beyond the `num_layers` its config.json declares.

    Mapping by the config would drop them without a word, leaving a shallower model than the
    one trained: the config and the weights disagree, and only the user knows which is right.
    Keeping fewer layers on purpose is `model.num_layers` of a fine-tuning config, which reads
    the whole checkpoint and leaves the top layers out of the model (`merge_encoder_params`).
    """
    extra = sorted({int(index) for index in (name[len(prefix):].split(".")[0]
                                             for name in names if name.startswith(prefix))
                    if index.isdigit() and int(index) >= num_layers})
    if extra:
        raise ValueError(
            f"{source} holds encoder layers up to {prefix}{extra[-1]} ({extra[-1] + 1} layers) "
            f"but config.json has num_hidden_layers={num_layers}, so layers "
            f"{', '.join(map(str, extra))} would be dropped. Correct num_hidden_layers in "
            "config.json; to fine-tune only the bottom layers, keep the config as it is and "
            "set model.num_layers instead.")


def tl_shape(entry: _Entry, config: BertConfig) -> tuple:
    """The tl_jax shape of a tensor map entry (attention kernels split into heads)."""
    E, H = config.hidden_size, config.num_heads
    if entry.kind == "heads_in":
        return (E, H, E // H)
    if entry.kind == "heads_bias":
        return (H, E // H)
    if entry.kind == "heads_out":
        return (H, E // H, E)
    if entry.kind == "linear":
        return entry.hf_shape[::-1]
    return entry.hf_shape


def params_to_hf_tensors(flat: dict, config: BertConfig, with_heads: bool = True) -> dict:
    """HF tensors from flat tl_jax params (the BertForPreTraining tree, `/` paths).

    with_heads=True gives `BertForPreTraining` names (`bert.` prefix and `cls.*`), False gives
    `BertModel` names. A tl_jax param the HF layout cannot hold (adapters, LoRA) is an error.
    """
    if config.adapter_size:
        # An adapter is a nonlinear block beside the layer: unlike LoRA it has no kernel to be
        # folded into, so no BertModel computes what this encoder does.
        raise ValueError(
            f"HF BERT has no adapters, and this encoder has bottleneck adapters (adapter_size="
            f"{config.adapter_size}, as configs/transfer_adapters.py trains): an adapter cannot "
            "be folded into the kernels as LoRA is, so it has no BertModel export. Use the "
            "workdir itself: `tl_jax predict`, `tl_jax extract`, or --config.init_from for "
            "fine-tuning.")
    if config.lora_rank:
        raise ValueError("HF BERT has no LoRA: fold it into the kernels first (merge_lora(); "
                         "`tl_jax convert` and export() do so)")
    if config.factorised:
        raise ValueError(
            f"HF BERT has no factorised embeddings: this model's embeddings are "
            f"{config.embedding_size} wide with an embeddings_project to hidden_size="
            f"{config.hidden_size}, which BertModel / BertForPreTraining cannot hold. Export "
            "the encoder as a headless ELECTRA (tl_jax.interop.electra.export_encoder; `tl_jax "
            "convert` does so), whose HF model has that projection.")
    out, taken = {}, set()
    for entry in tensor_map(config):
        if _is_head(entry) and not with_heads:
            continue
        if entry.tl_path not in flat:
            raise ValueError(f"cannot export: tl_jax param {entry.tl_path!r} is missing"
                             + (" (export with_heads=False for an encoder without heads)"
                                if _is_head(entry) else ""))
        value = np.asarray(flat[entry.tl_path], dtype=np.float32)
        expected = tl_shape(entry, config)
        if value.shape != expected:
            raise ValueError(f"cannot export: tl_jax param {entry.tl_path!r} has shape "
                             f"{value.shape}, config implies {expected}")
        name = entry.hf_name if _is_head(entry) or not with_heads else "bert." + entry.hf_name
        out[name] = to_hf(entry.kind, value, entry.hf_shape)
        taken.add(entry.tl_path)
    left = sorted(p for p in flat if p not in taken and (with_heads or p.startswith("bert/")))
    if left:
        raise ValueError(f"cannot export: tl_jax params with no HF BERT name: {left[:10]}")
    return out


def fold_lora(flat: dict, lora_alpha: float, keep=lambda base: False) -> tuple[dict, int]:
    """Folds LoRA pairs of flat params into their kernels: W + lora_alpha / r * A @ B, with r
    the pair's rank (`lora_a` (E, r), `lora_b` (r, heads, kv) beside a query or value
    `kernel` (E, heads, kv)). Returns `(flat, number of pairs folded)`; a folded pair's tensors
    are left out. A pair whose path prefix `keep` accepts (`.../query/`), or that has no kernel
    beside it, stays as it is. The kernel keeps its dtype; the sum is float32."""
    def folds(base):
        return (base + "kernel" in flat and base + "lora_a" in flat and base + "lora_b" in flat
                and not keep(base))

    out, folded = {}, 0
    for path, value in flat.items():
        leaf = path.rsplit("/", 1)[-1]
        base = path[: len(path) - len(leaf)]
        if leaf in ("lora_a", "lora_b") and folds(base):
            continue
        if leaf == "kernel" and folds(base):
            a = np.asarray(flat[base + "lora_a"], np.float32)  # (E, r)
            b = np.asarray(flat[base + "lora_b"], np.float32)  # (r, heads, kv)
            update = (lora_alpha / a.shape[1]) * np.einsum("er,rhd->ehd", a, b)
            value = (np.asarray(value, np.float32) + update).astype(np.asarray(value).dtype)
            folded += 1
        out[path] = value
    return out, folded


def merge_lora(params: dict, config: BertConfig) -> tuple[dict, BertConfig]:
    """Folds LoRA updates into the query/value kernels: W + alpha/r * A @ B (`fold_lora`).
    Returns `(params, config)` with the `lora_*` params removed and `lora_rank=0`."""
    if not config.lora_rank:
        return params, config
    flat, _ = fold_lora(safetensors_io.flatten_params(params), config.lora_alpha)
    return safetensors_io.unflatten_params(flat), config.replace(lora_rank=0)


# ----------------------------------------------------------------------------- directories


def read_hf_config(directory) -> BertConfig:
    """The `BertConfig` of a HF directory; a clear error when it is not a BERT checkpoint."""
    hf, config_file = read_config_json(directory)
    return config_from_hf(hf, source=str(config_file))


def _fresh_params(config: BertConfig, with_heads: bool, rng) -> dict:
    import flax.linen as nn  # local: only needed when something must be initialised

    model = (bert_model.BertForPreTraining if with_heads else bert_model.BertModel)(config)
    ids = jnp.zeros((1, 1), jnp.int32)
    variables = jax.jit(model.init)(rng, ids)
    return safetensors_io.flatten_params(nn.unbox(variables["params"]))


def load(directory, *, with_heads: bool = True, rng=None, warn: bool = True):
    """Reads a HF BERT directory into `(BertConfig, params, LoadReport)`.

    with_heads=True returns the `BertForPreTraining` tree (`bert/`, `mlm_head/`, `nsp_head/`);
    False returns the `BertModel` tree (no prefix). Params the checkpoint lacks (typically the
    MLM/NSP heads, sometimes the pooler) are freshly initialised from `rng`, with a warning.
    """
    directory = pathlib.Path(directory)
    config = read_hf_config(directory)
    tensors, weight_file = safetensors_io.read_hf_tensors(directory)
    flat, report = params_from_hf_tensors(tensors, config, source=str(weight_file))
    if not with_heads:
        report.missing = [p for p in report.missing if p.startswith("bert/")]
        report.unused += [n for n in report.used if n.removeprefix("bert.").startswith("cls.")]
        report.used = [n for n in report.used if not n.removeprefix("bert.").startswith("cls.")]
        flat = {p: v for p, v in flat.items() if p.startswith("bert/")}
    encoder_missing = [p for p in report.missing
                       if p.startswith("bert/") and not p.startswith("bert/pooler/")]
    if encoder_missing:
        raise ValueError(f"{weight_file} lacks encoder tensors (tl_jax paths): "
                         f"{encoder_missing[:10]}{' ...' if len(encoder_missing) > 10 else ''}")
    if report.missing:
        if warn:
            warnings.warn(f"{weight_file}: not in the checkpoint, freshly initialised: "
                          f"{report.missing}")
        # Heads and pooler do not depend on depth: a 1-layer model initialises them cheaply.
        fresh = _fresh_params(config.replace(num_layers=1), True,
                              jax.random.PRNGKey(0) if rng is None else rng)
        for path in report.missing:
            flat[path] = fresh[path]
    if not with_heads:
        flat = {p.removeprefix("bert/"): v for p, v in flat.items()}
    return config, safetensors_io.unflatten_params(flat), report


# What a checkpoint's encoder must share with the model it warm-starts, tensor for tensor.
ARCHITECTURE_FIELDS = ("hidden_size", "num_layers", "num_heads", "intermediate_size",
                       "embedding_width")


def architecture_differences(model_config: BertConfig, source: BertConfig) -> list[str]:
    """`field: model X vs checkpoint Y` for each of `ARCHITECTURE_FIELDS` that differs."""
    return [f"{f}: model {getattr(model_config, f)} vs checkpoint {getattr(source, f)}"
            for f in ARCHITECTURE_FIELDS if getattr(model_config, f) != getattr(source, f)]


def load_flat_params(directory, model_config: Optional[BertConfig] = None) -> dict:
    """The checkpoint's tensors as flat tl_jax params (`bert/...`, `mlm_head/...` paths of the
    BertForPreTraining tree), without initialising anything: for name-and-shape warm starts.

    model_config: the model they are for; an architecture that differs from the checkpoint's
    (depth, width, heads) is an error here, before any tensor is silently left out.
    """
    config = read_hf_config(directory)
    if model_config is not None:
        diff = architecture_differences(model_config, config)
        if diff:
            raise ValueError(f"{directory}: checkpoint architecture differs from the model's: "
                             + "; ".join(diff) + f". To take its architecture, set "
                             f"model.size={directory} (and data.tokenizer={directory}).")
    tensors, weight_file = safetensors_io.read_hf_tensors(directory)
    flat, _ = params_from_hf_tensors(tensors, config, source=str(weight_file))
    return flat


def config_from_params(params, **fields) -> BertConfig:
    """The `BertConfig` implied by a param tree's shapes (the encoder anywhere in it).

    Shapes fix every size, heads included (query kernels are (H, heads, kv)), and the
    embedding width when an `embeddings_project` (E, H) follows the embeddings; `fields` give
    what shapes cannot (hidden_act, layer_norm_eps, dropout rates).
    """
    flat = safetensors_io.flatten_params(params)
    root = find_bert_root(flat)
    layers = {int(p[len(root + "encoder/layer_"):].split("/")[0])
              for p in flat if p.startswith(root + "encoder/layer_")}
    if layers != set(range(len(layers))) or not layers:
        raise ValueError(f"encoder layers under {root}encoder/ are not layer_0..layer_N: "
                         f"{sorted(layers)}")
    words = flat[root + "embeddings/word_embeddings/embedding"]  # (V, E)
    query = flat[root + "encoder/layer_0/attention/query/kernel"]  # (H, heads, kv)
    project = flat.get(root + "embeddings_project/kernel")  # (E, H) when factorised
    if project is not None and tuple(project.shape) != (words.shape[1], query.shape[0]):
        raise ValueError(f"{root}embeddings_project/kernel has shape {tuple(project.shape)}; "
                         f"the embeddings ({words.shape[1]} wide) and layers ({query.shape[0]} "
                         f"wide) imply {(words.shape[1], query.shape[0])}")
    if project is None and words.shape[1] != query.shape[0]:
        raise ValueError(f"the embeddings under {root}embeddings/ are {words.shape[1]} wide but "
                         f"the layers {query.shape[0]}, and there is no {root}embeddings_project")
    sizes = dict(
        vocab_size=words.shape[0],
        hidden_size=query.shape[0],
        embedding_size=words.shape[1] if project is not None else 0,
        num_layers=len(layers),
        num_heads=query.shape[1],
        intermediate_size=flat[root + "encoder/layer_0/mlp/intermediate/kernel"].shape[1],
        max_position_embeddings=flat[root + "embeddings/position_embeddings/embedding"].shape[0],
        type_vocab_size=flat[root + "embeddings/token_type_embeddings/embedding"].shape[0],
        adapter_size=(flat[root + "encoder/layer_0/mlp_adapter/down/kernel"].shape[1]
                      if root + "encoder/layer_0/mlp_adapter/down/kernel" in flat else 0),
        lora_rank=(flat[root + "encoder/layer_0/attention/query/lora_a"].shape[1]
                   if root + "encoder/layer_0/attention/query/lora_a" in flat else 0),
    )
    sizes.update(fields)
    return BertConfig(**sizes)


def encoder_and_heads(params) -> tuple[dict, bool]:
    """Re-roots any tree holding a BERT encoder as a BertForPreTraining-style tree.

    Returns `(tree, has_heads)`: `tree` has the encoder under `bert/`, plus `mlm_head`/
    `nsp_head` when they sit beside it (a pretraining model). Other params (a task's
    classifier) are dropped: the HF BERT layout has no place for them.
    """
    flat = safetensors_io.flatten_params(params)
    root = find_bert_root(flat)
    parent = root[: -len("bert/")] if root.endswith("bert/") else None
    out = {"bert/" + p[len(root):]: v for p, v in flat.items() if p.startswith(root)}
    heads = {}
    if parent is not None:
        heads = {p[len(parent):]: v for p, v in flat.items()
                 if p.startswith((parent + "mlm_head/", parent + "nsp_head/"))}
    has_heads = (any(p.startswith("mlm_head/") for p in heads)
                 and any(p.startswith("nsp_head/") for p in heads))
    if has_heads:
        out.update(heads)
    return safetensors_io.unflatten_params(out), has_heads


def load_pretrained(directory):
    """Family-table interface: `(config, params)` of the BertForPreTraining tree."""
    config, params, _ = load(directory)
    return config, params


def _pretraining_flat(params) -> dict:
    flat = safetensors_io.flatten_params(params)
    if any(p.startswith("bert/") for p in flat):
        return flat
    return {"bert/" + p: v for p, v in flat.items()}  # a BertModel / BertEncoder tree


def export(params, config: BertConfig, directory, *, with_heads: bool = True,
           tokenizer=None) -> pathlib.Path:
    """Writes `config.json` + `model.safetensors` (+ tokenizer files) in the HF BERT layout.

    params: a BertForPreTraining tree, or a BertModel tree when with_heads=False.
    tokenizer: None, a directory holding tokenizer files (copied), or a `tokenizers.Tokenizer`
    (saved as tokenizer.json plus vocab.txt). Its vocabulary may not exceed the model's.
    """
    directory = pathlib.Path(directory)
    params, config = merge_lora(params, config)
    tensors = params_to_hf_tensors(_pretraining_flat(params), config, with_heads)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(
        json.dumps(config_to_hf(config, with_heads), indent=2) + "\n")
    safetensors_io.write_safetensors(directory / "model.safetensors", tensors)
    if tokenizer is not None:
        write_tokenizer(tokenizer, directory, config.vocab_size, config.max_position_embeddings)
    return directory


def save_pretrained(directory, config: BertConfig, params) -> None:
    """Family-table interface: export with heads when the tree has them."""
    has_heads = "mlm_head" in params
    export(params, config, directory, with_heads=has_heads)


# ----------------------------------------------------------------------------- init_from


def find_bert_root(flat_target: dict) -> str:
    """The path prefix of the BERT encoder in a flat param tree (`bert/`, `""`, `student/bert/`,
    ...); an error unless exactly one encoder is the model's."""
    suffix = "embeddings/word_embeddings/embedding"
    roots = [p[: -len(suffix)] for p in flat_target if p.endswith(suffix)]
    # A distillation run keeps its frozen teacher nested (`teacher/bert/`) beside the student
    # (`bert/`): the shallowest encoder is the model, when exactly one is shallowest.
    depths = [r.count("/") for r in roots]
    if len(roots) > 1 and depths.count(min(depths)) == 1:
        return roots[depths.index(min(depths))]
    if len(roots) != 1:
        raise ValueError(f"expected exactly one BERT encoder in the param tree (a path ending "
                         f"in {suffix!r}), found {len(roots)}: {roots}")
    return roots[0]


def init_from_hf(params, hf_dir, *, warn: bool = True):
    """Copies HF BERT weights into an initialised tl_jax param tree; returns `(params, report)`.

    The tree may hold the encoder anywhere (`bert/...`, top level, or inside a task model);
    heads are taken when the tree has `mlm_head`/`nsp_head` beside the encoder. Params the
    checkpoint lacks (e.g. a classifier) keep their initial values and are listed in
    `report.missing`; checkpoint tensors with no place in the tree are in `report.unused`.
    A shape mismatch is an error naming the param.
    """
    config = read_hf_config(hf_dir)
    tensors, weight_file = safetensors_io.read_hf_tensors(hf_dir)
    source, report = params_from_hf_tensors(tensors, config, source=str(weight_file))
    hf_name = {e.tl_path: e.hf_name for e in tensor_map(config)}
    return merge_encoder_params(params, source, report, hf_name, where=str(weight_file),
                                hf_dir=hf_dir, warn=warn)


def merge_encoder_params(params, source: dict, report, hf_name: dict, *, where: str, hf_dir,
                         warn: bool = True):
    """Copies flat checkpoint params (`bert/...` for the encoder, anything else for heads that
    sit beside it) into `params`, wherever its BERT encoder is; returns `(params, report)`.

    Shared by the BERT and ELECTRA `init_from_hf`. Params the checkpoint lacks keep their
    values and are listed in `report.missing`; checkpoint tensors with no place in the tree move
    from `report.used` to `report.unused` (`hf_name` gives their checkpoint names); a shape
    mismatch is an error naming the tensor, the param and `where` the weights came from.
    """
    # Not read to the host: under a multi-process mesh the trainer's fresh params are global
    # arrays no process can read; those the checkpoint replaces come back as numpy, which the
    # trainer then places with the params' shardings.
    target = safetensors_io.flatten_params(params, to_host=False)
    from flax.core import meta

    boxed = [p for p, v in target.items() if isinstance(v, meta.AxisMetadata)]
    if boxed:
        # (It failed as "'LogicallyPartitioned' object has no attribute 'shape'".)
        kind = type(target[boxed[0]]).__name__
        raise ValueError(f"init_from_hf: the params hold boxed leaves ({kind} at {boxed[0]}), "
                         "as model.init returns them; unbox them first: "
                         "flax.linen.unbox(variables['params'])")
    root = find_bert_root(target)
    parent = root[: -len("bert/")] if root.endswith("bert/") else None
    merged, taken = dict(target), set()
    for path, value in source.items():
        name = hf_name.get(path, path)
        if path.startswith("bert/"):
            dest = root + path[len("bert/"):]
        else:
            dest = None if parent is None else parent + path
        if dest is None or dest not in target:
            report.unused.append(name)
            report.used = [n for n in report.used if n != name and n.removeprefix("bert.") != name]
            continue
        if tuple(target[dest].shape) != value.shape:
            raise ValueError(f"{where}: {name} maps to {dest} with shape {value.shape}, but the "
                             f"model has {tuple(target[dest].shape)}")
        merged[dest] = value.astype(target[dest].dtype)
        taken.add(dest)
    report.missing = sorted(p for p in target if p not in taken)
    report.unused = sorted(set(report.unused))
    if warn and report.missing:
        warnings.warn(f"init_from {hf_dir}: {len(report.missing)} params keep their fresh "
                      f"initialisation: {report.missing[:10]}")
    return safetensors_io.unflatten_params(merged), report
