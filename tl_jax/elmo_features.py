"""ELMo features for downstream models: every biLM layer, and a task-specific scalar mix.

ELMo (Peters et al., 2018) feeds a task model with

    ELMo_k = gamma * sum_j softmax(s)_j * h_{k,j}      (j = char-CNN layer, LSTM layers 1..L)

where the biLM is frozen and `s`, `gamma` are learned by the task. `ElmoEncoder` is that
feature extractor as a Flax module: it wraps the `BiLM` (params under `elmo/`) and a
`ScalarMix` (params under `scalar_mix/`, from `tl_jax.models.scalar_mix`) and returns
features (B, T, 2P) for the tokens of each sentence, so a downstream head can consume them where
it would consume BERT's last layer. `mode` picks what comes out: the learned mix, the top layer,
one layer, or all layers concatenated.

Freezing: `freeze_elmo=True` stops gradients into the biLM inside the model, but an optimizer
with weight decay (AdamW's default) still shrinks its weights step by step; the optimizer-level
way (no update, no decay, no optimizer state for frozen weights) is a transfer rule freezing the
`elmo/.*` paths, and is what to use when training with weight decay.

    config, params, vocab = load_elmo("/tmp/elmo_mini")          # a bilm workdir
    chars, mask = encode_sentences([["The", "cat", "sat", "."]], config.max_chars)
    encoder = ElmoEncoder(config, mode="scalar_mix")
    variables = encoder.init(rng, chars, mask)
    variables = with_pretrained_elmo(variables, params)            # drop in the biLM weights
    features, out = encoder.apply(variables, chars, mask)          # (B, T, 2P), one per token
"""
from __future__ import annotations

import os
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tl_jax.models import elmo
from tl_jax.models.scalar_mix import ScalarMix

MODES = ("scalar_mix", "top", "all", "layer")


def encode_sentences(sentences: Sequence[Sequence[str]], max_chars: int,
                     max_len: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Framed character ids for tokenised sentences: <S> tokens </S>, padded.

    Returns chars (B, T + 2, C) int32 and mask (B, T + 2) bool, T = the longest sentence (or
    `max_len`; longer sentences raise, since silently cutting them would drop tokens).
    """
    for i, sentence in enumerate(sentences):
        if isinstance(sentence, str):
            raise ValueError(f"sentence {i} is a string ({sentence[:30]!r}), not a list of "
                             f"tokens: tokenise it first (e.g. tl_jax.tasks.bilm.tokenize)")
    longest = max((len(s) for s in sentences), default=0)
    t = longest if max_len is None else max_len
    if longest > t:
        raise ValueError(f"a sentence has {longest} tokens, more than max_len={t}")
    chars = np.zeros((len(sentences), t + 2, max_chars), np.int32)
    mask = np.zeros((len(sentences), t + 2), bool)
    for i, sentence in enumerate(sentences):
        framed = [elmo.BOS_TOKEN] + list(sentence) + [elmo.EOS_TOKEN]
        chars[i, :len(framed)] = elmo.char_ids(framed, max_chars)
        mask[i, :len(framed)] = True
    return chars, mask


def layer_names(config: elmo.ElmoConfig) -> list[str]:
    """The biLM's feature layers, bottom up: char_cnn, lstm_1 .. lstm_L."""
    return ["char_cnn"] + [f"lstm_{i + 1}" for i in range(config.num_layers)]


class ElmoEncoder(nn.Module):
    """Token features from a (pretrained, usually frozen) biLM.

    Inputs are framed sentences from `encode_sentences`: chars (B, T + 2, C), mask (B, T + 2).
    Returns (features (B, T, D), intermediates) where the markers are stripped, so position t
    is the sentence's token t; intermediates hold every layer (B, T, 2P), the token mask
    (B, T) and, in scalar_mix mode, the mix weights.

    Attributes:
      mode: "scalar_mix" (learned softmax weights and gamma), "top" (last LSTM layer),
        "layer" (layer number `layer`: 0 = char CNN), "all" (layers concatenated, D = 2P (L+1)).
      layer_norm: normalise each layer before the scalar mix (ELMo's option).
      layer_norm_stats: "example" (statistics per sentence, over its tokens, the default) or
        "batch" (over the whole batch, <S> and </S> included, as AllenNLP's `Elmo` does; see
        `tl_jax.models.scalar_mix`).
      freeze_elmo: stop gradients into the biLM (ELMo's feature-based use).
      dropout_rate: dropout on the features (ELMo applies it to the mixed representation).
    """

    config: elmo.ElmoConfig
    mode: str = "scalar_mix"
    layer: int = -1
    layer_norm: bool = False
    layer_norm_stats: str = "example"
    freeze_elmo: bool = True
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, chars, mask, train: bool = False):
        if self.mode not in MODES:
            raise ValueError(f"Unknown ELMo feature mode {self.mode!r}; choose one of {MODES}")
        if not 0.0 <= self.dropout_rate < 1.0:
            # 10 (for 10%) dropped every feature, so the task head trained on zeros without a
            # word; a negative rate scaled the features up instead.
            raise ValueError(f"dropout_rate={self.dropout_rate} of the ELMo features must be in "
                             "[0, 1): the probability of dropping a unit (0.1 drops 10%)")
        _, hidden = elmo.BiLM(self.config, name="elmo")(chars, mask, train=False)
        names = layer_names(self.config)
        framed = [hidden[n] for n in names]  # (B, T + 2, 2P) each
        if self.freeze_elmo:
            framed = [jax.lax.stop_gradient(x) for x in framed]
        layers = [x[:, 1:-1] for x in framed]  # (B, T, 2P) each, markers stripped
        # Token t of the sentence sits at framed position t + 1; it is real when position
        # t + 2 (the token after it, at worst </S>) is inside the frame.
        token_mask = mask[:, 2:]  # (B, T)
        out = dict(zip(names, layers))
        out["mask"] = token_mask
        if self.mode == "scalar_mix":
            mix = ScalarMix(len(layers), layer_norm=self.layer_norm,
                            layer_norm_stats=self.layer_norm_stats, name="scalar_mix")
            if self.layer_norm and self.layer_norm_stats == "batch":
                # AllenNLP's Elmo mixes the framed layers, so <S> and </S> count in the layer
                # norm's statistics, and strips the markers afterwards: done the same way here.
                features = mix(framed, mask)[:, 1:-1]
            else:
                features = mix(layers, token_mask)
        elif self.mode == "top":
            features = layers[-1]
        elif self.mode == "layer":
            if not -len(layers) <= self.layer < len(layers):
                raise ValueError(f"layer={self.layer} but the biLM has {len(layers)} layers "
                                 f"({names})")
            features = layers[self.layer]
        else:
            features = jnp.concatenate(layers, axis=-1)  # (B, T, 2P * (L + 1))
        features = features * token_mask[..., None].astype(features.dtype)
        features = nn.Dropout(self.dropout_rate, deterministic=not train)(features)
        return features, out


def with_pretrained_elmo(variables, elmo_params):
    """`variables` of a model holding an ElmoEncoder, with the biLM weights replaced.

    Finds the `elmo` sub-tree wherever the encoder sits and checks every shape.
    """
    found = []
    elmo_params = _plain(nn.unbox(elmo_params))

    def replace(tree, path=()):
        if isinstance(tree, dict) and "elmo" in tree and isinstance(tree["elmo"], dict) \
                and "char_cnn" in tree["elmo"]:
            where = "/".join(path + ("elmo",))
            _check_shapes(tree["elmo"], elmo_params, where)
            found.append(where)
            return {**tree, "elmo": jax.tree_util.tree_map(jnp.asarray, elmo_params)}
        if isinstance(tree, dict):
            return {k: replace(v, path + (k,)) for k, v in tree.items()}
        return tree

    new = replace(_plain(nn.unbox(variables)))
    if not found:
        raise ValueError("No ElmoEncoder ('elmo' sub-tree with a char_cnn) found in variables")
    return new


def _plain(tree):
    """Nested plain dicts (FrozenDicts and other mappings converted)."""
    if hasattr(tree, "items"):
        return {k: _plain(v) for k, v in tree.items()}
    return tree


def _check_shapes(target, source, where):
    t = {"/".join(str(getattr(k, "key", k)) for k in p): np.shape(v)
         for p, v in jax.tree_util.tree_flatten_with_path(target)[0]}
    s = {"/".join(str(getattr(k, "key", k)) for k in p): np.shape(v)
         for p, v in jax.tree_util.tree_flatten_with_path(source)[0]}
    if t != s:
        diff = sorted(set(t.items()) ^ set(s.items()))[:5]
        raise ValueError(f"pretrained biLM params do not match the encoder at {where}: "
                         f"first differences {diff}")


def load_elmo(workdir: str) -> tuple[elmo.ElmoConfig, dict, list[str]]:
    """(config, biLM params, vocabulary) of a `bilm` training run's workdir."""
    from tl_jax import checkpoint
    from tl_jax.tasks import bilm

    config_path = os.path.join(workdir, "elmo_config.json")
    if not os.path.exists(config_path):
        raise FileNotFoundError(f"{config_path} not found: {workdir} is not a bilm workdir")
    raw = checkpoint.load_json(config_path, "the biLM's config, written by `tl_jax train` with "
                               "task=bilm")
    try:  # a hand-edited file: name it, not just the field
        raw["filters"] = tuple(tuple(x) for x in raw["filters"])
        config = elmo.ElmoConfig(**raw)
    except (KeyError, TypeError, ValueError) as e:
        detail = f"no field {e}" if isinstance(e, KeyError) else str(e)
        raise ValueError(f"{config_path}: not a biLM config ({detail})") from None
    flat, _ = checkpoint.load_params_from_workdir(workdir)
    params: dict = {}
    for path, value in flat.items():
        node = params
        *parents, leaf = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return config, params, bilm.load_vocab(os.path.join(workdir, "vocab.txt"))


class ElmoClassifier(nn.Module):
    """A sentence classifier (or, with `per_token`, a tagger) over ELMo features.

    The head a downstream task puts on ELMo where it would put one on BERT's last layer:
    features from `ElmoEncoder`, dropout, then mean pooling over real tokens and a linear layer
    (or a linear layer per token). Params: `encoder/elmo/...` (the biLM: load it with
    `with_pretrained_elmo`), `encoder/scalar_mix/...`, `classifier/...`.

    Returns (logits (B, C) or (B, T, C), intermediates of the encoder + "features").
    """

    config: elmo.ElmoConfig
    num_classes: int
    mode: str = "scalar_mix"
    layer_norm: bool = False
    layer_norm_stats: str = "example"
    freeze_elmo: bool = True
    dropout_rate: float = 0.5
    per_token: bool = False

    @nn.compact
    def __call__(self, chars, mask, train: bool = False):
        features, out = ElmoEncoder(self.config, mode=self.mode, layer_norm=self.layer_norm,
                                    layer_norm_stats=self.layer_norm_stats,
                                    freeze_elmo=self.freeze_elmo,
                                    dropout_rate=self.dropout_rate, name="encoder")(
            chars, mask, train=train)
        token_mask = out["mask"].astype(features.dtype)[..., None]  # (B, T, 1)
        if self.per_token:
            logits = nn.Dense(self.num_classes, name="classifier")(features)  # (B, T, C)
        else:
            pooled = jnp.sum(features * token_mask, axis=1) / jnp.maximum(
                jnp.sum(token_mask, axis=1), 1.0)  # (B, D)
            logits = nn.Dense(self.num_classes, name="classifier")(pooled)  # (B, C)
        return logits, dict(out, features=features)
