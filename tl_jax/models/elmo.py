"""An ELMo-style bidirectional language model (Peters et al., 2018, "Deep contextualized word
representations"; Jozefowicz et al., 2016, "Exploring the limits of language modeling").

    tokens --chars--> CharCNN (filters of several widths, max-pool, highway, projection)  = layer 0
           --> forward LSTM stack  (LSTM with projection, residual between layers)   \\  layers
           --> backward LSTM stack (the same, run over the reversed sequence)        /  1..L
           --> one softmax over the word vocabulary, shared by both directions

`BiLM.apply` returns `(outputs, intermediates)`: outputs hold the top forward and backward states
(B, T, P); intermediates hold every layer as ELMo's downstream users see it, each (B, T, 2P):
`char_cnn` (the token layer duplicated, [x; x], as ELMo does so all layers have the same width)
and `lstm_1` .. `lstm_L` (forward and backward states concatenated, in reading order).
`BiLM.logits` applies the tied softmax; `tl_jax.tasks.bilm` has the full and sampled losses.

Characters are UTF-8 bytes; `char_ids` turns tokens into the (T, C) id array the model reads.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tl_jax.models import layers

# Character ids: 0 pads; byte b is b + 1; then word-boundary and sentence-marker characters.
CHAR_PAD, BOW, EOW, BOS_CHAR, EOS_CHAR = 0, 257, 258, 259, 260
# Word id 0 is <pad> in every biLM vocabulary (tl_jax.tasks.bilm.SPECIALS): never a target.
PAD_WORD_ID = 0
NUM_CHARS = 261
BOS_TOKEN, EOS_TOKEN = "<S>", "</S>"


@dataclasses.dataclass(frozen=True)
class ElmoConfig:
    vocab_size: int
    max_chars: int = 50  # per token, including the begin/end-of-word markers
    char_dim: int = 16
    filters: tuple = ((1, 32), (2, 32), (3, 64), (4, 128), (5, 256), (6, 512), (7, 1024))
    highway_layers: int = 2
    projection_dim: int = 512  # P: token layer width and LSTM output width
    lstm_dim: int = 4096  # LSTM cell size before the projection
    num_layers: int = 2
    cell_clip: float = 3.0  # ELMo clips cell and projected states to stay stable in long runs
    proj_clip: float = 3.0
    dropout_rate: float = 0.1
    # Initial biases. The references start both at 1: bilm-tf's LSTMCell adds forget_bias=1.0
    # and AllenNLP's LstmCellWithProjection initialises the forget-gate bias to 1 (Jozefowicz et
    # al., 2015); AllenNLP's Highway starts its carry gate at 1 (bilm-tf: a transform-gate bias
    # of -2), so the highways begin by mostly passing their input through. 0 (the default,
    # with which the README's figures were made) starts the forget and carry gates at 0.5.
    forget_bias_init: float = 0.0
    highway_gate_bias_init: float = 0.0

    def __post_init__(self):
        # 10 (for 10%) dropped every unit, so the biLM trained on zeros without a word; a
        # negative rate scaled the units up.
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"ElmoConfig.dropout_rate={self.dropout_rate} must be in [0, 1): "
                             "the probability of dropping a unit (0.1 drops 10%)")

    @property
    def cnn_features(self) -> int:
        return sum(n for _, n in self.filters)

    def flops_per_token(self, softmax_size: int | None = None) -> float:
        """Forward + backward (x3) matmul FLOPs per token; the softmax scores `softmax_size`
        words per direction (default: the full vocabulary; a sampled softmax scores fewer)."""
        c, p, h = self.max_chars, self.projection_dim, self.lstm_dim
        cnn = sum(2 * (c - w + 1) * w * self.char_dim * n for w, n in self.filters)  # VALID
        highway = self.highway_layers * 2 * self.cnn_features * 2 * self.cnn_features
        proj = 2 * self.cnn_features * p
        lstm = 2 * self.num_layers * (2 * (p + p) * 4 * h + 2 * h * p)  # two directions
        softmax = 2 * 2 * p * (softmax_size or self.vocab_size)
        return 3.0 * (cnn + highway + proj + lstm + softmax)


SIZES = {
    "tiny": dict(max_chars=16, char_dim=8, filters=((1, 8), (2, 8), (3, 16)), highway_layers=1,
                 projection_dim=16, lstm_dim=32, num_layers=2),
    "mini": dict(max_chars=20, char_dim=16, filters=((1, 32), (2, 32), (3, 64), (4, 64)),
                 highway_layers=1, projection_dim=128, lstm_dim=512, num_layers=2),
    "small": dict(max_chars=50, char_dim=16,
                  filters=((1, 32), (2, 32), (3, 64), (4, 128), (5, 256), (6, 512)),
                  highway_layers=2, projection_dim=256, lstm_dim=1024, num_layers=2),
    # The original ELMo ("Original (5.5B)" has the same shape).
    "base": dict(),
}


def elmo_config(size: str, vocab_size: int, **overrides) -> ElmoConfig:
    """The config of a named size (see SIZES), with overrides."""
    if size not in SIZES:
        raise ValueError(f"Unknown ELMo size {size!r}; choose one of {sorted(SIZES)}")
    return ElmoConfig(vocab_size=vocab_size, **{**SIZES[size], **overrides})


def char_ids(tokens: Sequence[str], max_chars: int) -> np.ndarray:
    """(T, max_chars) int32 character ids: BOW, UTF-8 bytes + 1, EOW, then padding.

    Words longer than max_chars - 2 bytes are cut (ELMo does the same). The sentence markers
    <S> and </S> get a character of their own so they never collide with a real word.
    """
    if max_chars < 3:
        raise ValueError(f"max_chars must be >= 3 (markers + one byte), got {max_chars}")
    out = np.zeros((len(tokens), max_chars), dtype=np.int32)
    for i, token in enumerate(tokens):
        if token == BOS_TOKEN:
            body = [BOS_CHAR]
        elif token == EOS_TOKEN:
            body = [EOS_CHAR]
        else:
            body = [b + 1 for b in token.encode("utf-8")[:max_chars - 2]]
        ids = [BOW] + body + [EOW]
        out[i, :len(ids)] = ids
    return out


def _kernel(axes: tuple, init=None):
    """A kernel initialiser (Flax's default `lecun_normal` unless `init` is given) annotated with
    logical axes, so `mesh.axis_rules` shard it: "embed" (-> fsdp) on a feature axis of every
    kernel. Nothing goes to the tensor axis: the highway's and the LSTM's outputs are split into
    halves / four gates that are combined elementwise, which a tensor split of that axis would
    put on different devices. Biases stay plain (replicated); they are small."""
    return nn.with_logical_partitioning(init or nn.linear.default_kernel_init, axes)


def _split_bias_init(parts: int, index: int, value: float):
    """A bias of `parts` equal blocks, zero except block `index`, which starts at `value`."""
    def init(key, shape, dtype=jnp.float32):
        del key
        n = shape[-1] // parts
        return jnp.zeros(shape, dtype).at[..., index * n:(index + 1) * n].set(value)
    return init


class CharCNN(nn.Module):
    """Token representations from characters: convolutions, max-pool, highway, projection.

    Each highway gate's bias starts at `config.highway_gate_bias_init` (AllenNLP's ELMo: 1, so
    the layers begin by mostly carrying their input through, sigmoid(1) = 0.73).
    """

    config: ElmoConfig

    @nn.compact
    def __call__(self, chars):
        cfg = self.config
        b, t, c = chars.shape
        # 261 characters: the rows cannot split; the columns go to fsdp. layers.Embed gathers
        # them before the lookup, so the looked-up characters stay split over the batch.
        emb = layers.Embed(NUM_CHARS, cfg.char_dim, name="char_embed", table_axes=(None, None),
                           out_axes=None, embedding_init=_kernel(
                               (None, "embed"), nn.linear.default_embed_init))(chars)  # (B,T,C,E)
        x = emb.reshape(b * t, c, cfg.char_dim)  # (B*T, C, E)
        pooled = []
        for width, n in cfg.filters:
            if width > c:
                raise ValueError(f"filter width {width} is wider than max_chars={c}")
            conv = nn.Conv(n, (width,), padding="VALID", name=f"conv_{width}",
                           kernel_init=_kernel((None, None, "embed")))(x)  # (BT, C-w+1, n)
            pooled.append(nn.relu(jnp.max(conv, axis=1)))  # (BT, n)
        h = jnp.concatenate(pooled, axis=-1)  # (BT, F)
        for i in range(cfg.highway_layers):
            gate_init = _split_bias_init(2, 1, cfg.highway_gate_bias_init)
            proj = nn.Dense(2 * h.shape[-1], bias_init=gate_init, name=f"highway_{i}",
                            kernel_init=_kernel(("embed", None)))(h)  # (BT, 2F)
            nonlinear, gate = jnp.split(proj, 2, axis=-1)
            gate = nn.sigmoid(gate)
            # The gate carries the input through: y = g * x + (1 - g) * relu(W x).
            h = gate * h + (1.0 - gate) * nn.relu(nonlinear)
        out = nn.Dense(cfg.projection_dim, name="projection",
                       kernel_init=_kernel(("embed", None)))(h)  # (BT, P)
        return out.reshape(b, t, cfg.projection_dim)  # (B, T, P)


class _GatheredDense(nn.Module):
    """`nn.Dense` (the same `kernel`, `bias`) whose kernel is gathered whole before use.

    The LSTM cells run inside `nn.scan`: a kernel left split over fsdp there made XLA move
    pieces of it, and of its gradient, between devices at every time step (all-to-alls and
    collective-permutes in the loop body). Asking for the whole kernel makes that one
    all-gather of a loop invariant, which XLA hoists out of the loop, as FSDP gathers every
    weight before using it; the gradient is summed whole over the steps and split after.
    """

    features: int
    kernel_axes: tuple
    use_bias: bool = True
    bias_init: object = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", _kernel(self.kernel_axes), (x.shape[-1], self.features),
                            jnp.float32)
        kernel = layers.logical_constraint(kernel, (None, None))
        y = jax.lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())))
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (self.features,), jnp.float32)
        return y


class LSTMProjCell(nn.Module):
    """An LSTM cell with a projected output (LSTMP), as in ELMo.

        [i, f, g, o] = W_x x + W_h h + b
        c' = clip(sigmoid(f) * c + sigmoid(i) * tanh(g), cell_clip)
        h' = clip(P (sigmoid(o) * tanh(c')), proj_clip)

    Carry: (c (B, H), h (B, P)). Returns (carry, h').

    The forget gate's bias starts at `forget_bias_init` (the other biases at 0). The reference
    implementations use 1: bilm-tf's `LSTMCell` adds forget_bias=1.0, AllenNLP's
    `LstmCellWithProjection` initialises it to 1 (Jozefowicz et al., 2015). With 0 the cell
    starts by halving its memory at every step.
    """

    hidden: int
    proj: int
    cell_clip: float | None = None
    proj_clip: float | None = None
    forget_bias_init: float = 0.0

    @nn.compact
    def __call__(self, carry, x):
        c, h = carry
        gates = (_GatheredDense(4 * self.hidden, ("embed", None), name="input",
                                bias_init=_split_bias_init(4, 1, self.forget_bias_init))(x)
                 + _GatheredDense(4 * self.hidden, ("embed", None), use_bias=False,
                                  name="recurrent")(h))  # (B, 4H)
        i, f, g, o = jnp.split(gates, 4, axis=-1)
        c = nn.sigmoid(f) * c + nn.sigmoid(i) * jnp.tanh(g)
        if self.cell_clip:
            c = jnp.clip(c, -self.cell_clip, self.cell_clip)
        h = _GatheredDense(self.proj, (None, "embed"), use_bias=False,
                           name="projection")(nn.sigmoid(o) * jnp.tanh(c))
        if self.proj_clip:
            h = jnp.clip(h, -self.proj_clip, self.proj_clip)
        return (c, h), h


# Runs the cell over the time axis (axis 1) with one set of parameters for every step.
_ScanLSTM = nn.scan(LSTMProjCell, variable_broadcast="params", split_rngs={"params": False},
                    in_axes=1, out_axes=1)


def reverse_padded(x, lengths):
    """Reverses each row's first `lengths[b]` steps, leaving the padding where it is.

    x: (B, T, ...), lengths: (B,). Applying it twice gives x back.
    """
    t = x.shape[1]
    pos = jnp.arange(t)[None, :]  # (1, T)
    idx = jnp.where(pos < lengths[:, None], lengths[:, None] - 1 - pos, pos)  # (B, T)
    idx = idx.reshape(idx.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, idx, axis=1)


class BiLM(nn.Module):
    """The ELMo biLM. Inputs: chars (B, T, C) int32 and mask (B, T) (True on real tokens,
    padding only at the end of a row)."""

    config: ElmoConfig

    def setup(self):
        cfg = self.config
        self.char_cnn = CharCNN(cfg)
        self.forward_layers = [
            _ScanLSTM(cfg.lstm_dim, cfg.projection_dim, cfg.cell_clip, cfg.proj_clip,
                      cfg.forget_bias_init, name=f"forward_{i}") for i in range(cfg.num_layers)]
        self.backward_layers = [
            _ScanLSTM(cfg.lstm_dim, cfg.projection_dim, cfg.cell_clip, cfg.proj_clip,
                      cfg.forget_bias_init, name=f"backward_{i}") for i in range(cfg.num_layers)]
        self.dropout = nn.Dropout(cfg.dropout_rate)
        # One softmax for both directions (tied): ELMo's parameter sharing.
        self.softmax_kernel = self.param(
            "softmax_kernel", nn.with_logical_partitioning(
                nn.initializers.normal(1.0 / np.sqrt(cfg.projection_dim)), ("vocab", "embed")),
            (cfg.vocab_size, cfg.projection_dim))
        self.softmax_bias = self.param(
            "softmax_bias", nn.with_logical_partitioning(nn.initializers.zeros, ("vocab",)),
            (cfg.vocab_size,))

    def __call__(self, chars, mask, train: bool = False):
        cfg = self.config
        if chars.shape[-1] != cfg.max_chars:
            # The char CNN would run on any width, on other spellings than it was trained on.
            raise ValueError(f"chars hold {chars.shape[-1]} characters per token, but this "
                             f"biLM has max_chars={cfg.max_chars}: encode them with that "
                             f"max_chars (elmo_features.encode_sentences)")
        b = chars.shape[0]
        maskf = mask.astype(jnp.float32)[..., None]  # (B, T, 1)
        lengths = jnp.sum(mask, axis=1).astype(jnp.int32)  # (B,)
        tokens = self.char_cnn(chars) * maskf  # (B, T, P)
        intermediates = {"char_cnn": jnp.concatenate([tokens, tokens], axis=-1)}  # (B, T, 2P)
        fwd = tokens
        bwd = reverse_padded(tokens, lengths)  # the backward LM reads right to left
        for i in range(cfg.num_layers):
            fwd_in = self.dropout(fwd, deterministic=not train)
            bwd_in = self.dropout(bwd, deterministic=not train)
            carry = (jnp.zeros((b, cfg.lstm_dim), fwd.dtype),
                     jnp.zeros((b, cfg.projection_dim), fwd.dtype))  # (c, h)
            _, fwd_out = self.forward_layers[i](carry, fwd_in)  # (B, T, P)
            _, bwd_out = self.backward_layers[i](carry, bwd_in)
            # Residual connections between LSTM layers (not into the first). They add the
            # layer's input before dropout; in bilm-tf the ResidualWrapper sits inside the
            # DropoutWrapper and adds the dropped-out input (the same outside training).
            if i > 0:
                fwd_out, bwd_out = fwd_out + fwd, bwd_out + bwd
            fwd, bwd = fwd_out * maskf, bwd_out * maskf  # reversal keeps padding at the end
            intermediates[f"lstm_{i + 1}"] = jnp.concatenate(
                [fwd, reverse_padded(bwd, lengths)], axis=-1)  # (B, T, 2P), reading order
        outputs = {"forward": self.dropout(fwd, deterministic=not train),
                   "backward": self.dropout(reverse_padded(bwd, lengths),
                                            deterministic=not train)}
        return outputs, intermediates

    def logits(self, hidden):
        """Full softmax logits (..., V) of hidden states (..., P), tied across directions.

        `<pad>` (word id PAD_WORD_ID) is never a target and the sampled softmax never draws it,
        so nothing trains its row: its logit is set to the dtype's most negative finite value,
        which gives it probability 0 in the normaliser (eval then scores the distribution that
        training samples from) without the inf - inf = NaN that -inf risks. The row gets no
        gradient through this mask.
        """
        logits = hidden @ self.softmax_kernel.T + self.softmax_bias
        is_pad = jnp.arange(logits.shape[-1]) == PAD_WORD_ID
        return jnp.where(is_pad, jnp.finfo(logits.dtype).min, logits)

    def softmax_weights(self):
        """(kernel (V, P), bias (V,)): for the sampled softmax in the loss."""
        return self.softmax_kernel, self.softmax_bias
