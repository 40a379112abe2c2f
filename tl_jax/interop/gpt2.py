"""GPT-2 <-> tl_jax weight maps (Hugging Face `GPT2LMHeadModel` layout) and safetensors I/O.

HF GPT-2 stores its projections as `Conv1D` modules whose weight is `(in, out)`, the same
orientation as a Flax `Dense` kernel, so no transpose is needed for them (nanoGPT transposes
because it uses `nn.Linear`, whose weight is `(out, in)`). The attention input projection is
fused: `c_attn.weight` is `(E, 3E)` with columns `[q | k | v]`, each head-major `(H, D)`, which
is exactly our `qkv` kernel `(E, 3, H, D)` flattened. The output projection `c_proj.weight`
`(H*D, E)` is our `out` kernel `(H, D, E)` flattened. `lm_head.weight` is tied to `wte`.

    config, params = load_pretrained("path/to/gpt2")      # config.json + model.safetensors
    save_pretrained("out/", config, params)               # loads in transformers unchanged
"""
import json
import pathlib

import numpy as np
from safetensors.numpy import save_file

from tl_jax.interop import check_field_types, read_config_json, safetensors_io
from tl_jax.models.gpt import GPTConfig

# HF buffers that are not parameters (older checkpoints store the causal mask).
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")
# The JSON type of every config.json field `config_from_hf` reads (n_inner: null = 4 * n_embd).
HF_FIELD_TYPES = {
    "vocab_size": int, "n_layer": int, "n_embd": int, "n_head": int, "n_positions": int,
    "n_inner": (int, type(None)), "resid_pdrop": float, "attn_pdrop": float,
    "layer_norm_epsilon": float, "initializer_range": float, "activation_function": str,
}


def config_from_hf(hf: dict, source: str = "GPT-2 config") -> GPTConfig:
    """A `GPTConfig` from a GPT-2 `config.json` dict (`source` names it in errors)."""
    missing = [k for k in ("vocab_size", "n_layer", "n_embd", "n_head", "n_positions")
               if k not in hf]
    if missing:
        raise ValueError(f"{source}: missing GPT-2 config field(s) {missing}")
    check_field_types(hf, source, HF_FIELD_TYPES)
    activation = hf.get("activation_function", "gelu_new")
    if activation not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ValueError(
            f"{source}: activation_function={activation!r} is not supported; tl_jax's GPT "
            "uses the tanh GELU ('gelu_new')"
        )
    for flag, expected in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                           ("reorder_and_upcast_attn", False)):
        if hf.get(flag, expected) != expected:
            raise ValueError(f"{source}: {flag}={hf[flag]!r} is not supported")
    embed = hf["n_embd"]
    try:
        return GPTConfig(
            vocab_size=hf["vocab_size"],
            num_layers=hf["n_layer"],
            embed_dim=embed,
            num_heads=hf["n_head"],
            max_len=hf["n_positions"],
            mlp_dim=hf.get("n_inner") or 4 * embed,
            dropout_rate=hf.get("resid_pdrop", 0.1),
            attention_dropout_rate=hf.get("attn_pdrop", 0.1),
            layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5),
            initializer_range=hf.get("initializer_range", 0.02),
        )
    except ValueError as e:  # "GPTConfig: num_heads must be positive, got 0": in which file
        raise ValueError(f"{source}: {e} (GPT-2 field names: n_layer, n_embd, n_head, "
                         "n_positions, n_inner)") from None


def config_to_hf(config: GPTConfig, **extra) -> dict:
    """A GPT-2 `config.json` dict for `config` (`extra` adds e.g. bos/eos token ids)."""
    hf = {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.max_len,
        "n_embd": config.embed_dim,
        "n_layer": config.num_layers,
        "n_head": config.num_heads,
        "n_inner": config.mlp_dim,
        "activation_function": "gelu_new",
        "resid_pdrop": config.dropout_rate,
        "embd_pdrop": config.dropout_rate,
        "attn_pdrop": config.attention_dropout_rate,
        "layer_norm_epsilon": config.layer_norm_eps,
        "initializer_range": config.initializer_range,
        "tie_word_embeddings": True,
    }
    hf.update(extra)
    return hf


def _take(state: dict, name: str, shape: tuple) -> np.ndarray:
    if name not in state:
        raise ValueError(f"GPT-2 state dict is missing {name!r}")
    value = np.asarray(state.pop(name), dtype=np.float32)
    if value.shape != tuple(shape):
        raise ValueError(f"GPT-2 tensor {name!r} has shape {value.shape}; expected {tuple(shape)}")
    return value


def params_from_hf(state: dict, config: GPTConfig) -> dict:
    """Flax params from a GPT-2 state dict (names with or without the `transformer.` prefix).

    Every tensor must be consumed; a leftover name is an error (it would mean a silent mismatch).
    """
    state = {k.removeprefix("transformer."): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.endswith(_IGNORED_SUFFIXES)}
    E, H, D, M = config.embed_dim, config.num_heads, config.head_dim, config.mlp_dim
    lm_head = state.pop("lm_head.weight", None)

    def ln(prefix):
        return {"scale": _take(state, f"{prefix}.weight", (E,)),
                "bias": _take(state, f"{prefix}.bias", (E,))}

    params = {
        "wte": {"embedding": _take(state, "wte.weight", (config.vocab_size, E))},
        "wpe": {"embedding": _take(state, "wpe.weight", (config.max_len, E))},
        "ln_f": ln("ln_f"),
    }
    if lm_head is not None and not np.array_equal(np.asarray(lm_head), params["wte"]["embedding"]):
        raise ValueError("GPT-2 lm_head.weight differs from wte.weight; tl_jax ties them")
    for i in range(config.num_layers):
        p = f"h.{i}"
        params[f"h_{i}"] = {
            "ln_1": ln(f"{p}.ln_1"),
            "ln_2": ln(f"{p}.ln_2"),
            "attn": {
                "qkv": {
                    "kernel": _take(state, f"{p}.attn.c_attn.weight", (E, 3 * E)).reshape(E, 3, H, D),
                    "bias": _take(state, f"{p}.attn.c_attn.bias", (3 * E,)).reshape(3, H, D),
                },
                "out": {
                    "kernel": _take(state, f"{p}.attn.c_proj.weight", (E, E)).reshape(H, D, E),
                    "bias": _take(state, f"{p}.attn.c_proj.bias", (E,)),
                },
            },
            "mlp": {
                "fc": {"kernel": _take(state, f"{p}.mlp.c_fc.weight", (E, M)),
                       "bias": _take(state, f"{p}.mlp.c_fc.bias", (M,))},
                "proj": {"kernel": _take(state, f"{p}.mlp.c_proj.weight", (M, E)),
                         "bias": _take(state, f"{p}.mlp.c_proj.bias", (E,))},
            },
        }
    if state:
        raise ValueError(f"GPT-2 state dict has unexpected tensors: {sorted(state)[:10]}")
    return params


def params_to_hf(params: dict, config: GPTConfig) -> dict:
    """A GPT-2 state dict (`transformer.*` names, numpy float32) from Flax params.

    `lm_head.weight` is left out: it is tied to `wte`, and transformers re-ties it on load.
    """
    E, M = config.embed_dim, config.mlp_dim

    def arr(x):
        return np.ascontiguousarray(np.asarray(x, dtype=np.float32))

    out = {
        "transformer.wte.weight": arr(params["wte"]["embedding"]),
        "transformer.wpe.weight": arr(params["wpe"]["embedding"]),
        "transformer.ln_f.weight": arr(params["ln_f"]["scale"]),
        "transformer.ln_f.bias": arr(params["ln_f"]["bias"]),
    }
    for i in range(config.num_layers):
        b, p = params[f"h_{i}"], f"transformer.h.{i}"
        out.update({
            f"{p}.ln_1.weight": arr(b["ln_1"]["scale"]),
            f"{p}.ln_1.bias": arr(b["ln_1"]["bias"]),
            f"{p}.ln_2.weight": arr(b["ln_2"]["scale"]),
            f"{p}.ln_2.bias": arr(b["ln_2"]["bias"]),
            f"{p}.attn.c_attn.weight": arr(b["attn"]["qkv"]["kernel"]).reshape(E, 3 * E),
            f"{p}.attn.c_attn.bias": arr(b["attn"]["qkv"]["bias"]).reshape(3 * E),
            f"{p}.attn.c_proj.weight": arr(b["attn"]["out"]["kernel"]).reshape(E, E),
            f"{p}.attn.c_proj.bias": arr(b["attn"]["out"]["bias"]),
            f"{p}.mlp.c_fc.weight": arr(b["mlp"]["fc"]["kernel"]).reshape(E, M),
            f"{p}.mlp.c_fc.bias": arr(b["mlp"]["fc"]["bias"]),
            f"{p}.mlp.c_proj.weight": arr(b["mlp"]["proj"]["kernel"]).reshape(M, E),
            f"{p}.mlp.c_proj.bias": arr(b["mlp"]["proj"]["bias"]),
        })
    return out


_TL_PARAMS = "params.safetensors"  # a tl_jax weights directory (`tl_jax convert` hf_to_tl)


def _tl_weights(path: pathlib.Path):
    """`(config, params)` of a tl_jax weights directory written by `tl_jax convert`."""
    from tl_jax.interop import convert

    config, params, family = convert.load_tl_params(path)
    if family != "gpt2":
        raise ValueError(f"{path} holds {family!r} weights, not GPT-2")
    return config, params


def load_config(path) -> GPTConfig:
    """The `GPTConfig` of a GPT-2 directory, or of a tl_jax weights directory converted from
    one, without reading the weights."""
    path = pathlib.Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"GPT-2 directory {path} has no config.json")
    meta, config_file = read_config_json(path)
    if (path / _TL_PARAMS).exists():
        if meta.get("family") != "gpt2":
            raise ValueError(f"{path} holds {meta.get('family')!r} weights, not GPT-2")
        return GPTConfig(**meta["config"])
    if "task" in meta and isinstance(meta.get("model"), dict):
        # A `tl_jax train` run's config.json: a workdir whose checkpoints/ folder is gone.
        raise FileNotFoundError(
            f"{path} is a tl_jax workdir (task={meta['task']!r}) without a checkpoints/ "
            "folder: the run saved no checkpoint, or it was removed")
    if meta.get("model_type", "gpt2") != "gpt2":
        raise ValueError(f"{config_file}: model_type={meta['model_type']!r}, expected 'gpt2'")
    return config_from_hf(meta, str(config_file))


def load_pretrained(path) -> tuple:
    """Reads `config.json` and the weights (`model.safetensors`, `pytorch_model.bin`, or sharded
    ones with an index) of a GPT-2 directory, or the tl_jax weights directory `tl_jax convert`
    made of one: `(GPTConfig, params)`."""
    path = pathlib.Path(path)
    if (path / _TL_PARAMS).exists():
        return _tl_weights(path)
    config = load_config(path)  # first: a directory without config.json is named as such
    tensors, weights_file = safetensors_io.read_hf_tensors(path)
    try:
        return config, params_from_hf(tensors, config)
    except ValueError as e:
        raise ValueError(f"{weights_file}: {e}") from e


def save_pretrained(path, config: GPTConfig, params: dict, **hf_extra) -> None:
    """Writes `config.json` + `model.safetensors` loadable by `GPT2LMHeadModel.from_pretrained`."""
    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config_to_hf(config, **hf_extra), indent=2))
    save_file(params_to_hf(params, config), str(path / "model.safetensors"),
              metadata={"format": "pt"})
