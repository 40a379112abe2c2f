"""Shared layers: the hashed-mask dropout, mixed-precision dots, the dense layer and its bias."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tl_jax.models import layers
from tl_jax.models.layers import Dropout


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_dropout_rate_scaling_and_determinism(rate):
    x = jnp.ones((64, 128, 32), jnp.float32)
    layer = Dropout(rate)
    apply = lambda seed: layer.apply({}, x, deterministic=False,  # noqa: E731
                                     rngs={"dropout": jax.random.PRNGKey(seed)})
    y = np.asarray(apply(0))
    dropped = float((y == 0).mean())
    assert abs(dropped - rate) < 0.01, dropped
    np.testing.assert_allclose(y[y != 0], 1.0 / (1.0 - rate), rtol=1e-6)  # inverted scaling
    assert abs(float(y.mean()) - 1.0) < 0.02                              # unbiased
    np.testing.assert_array_equal(y, np.asarray(apply(0)))                # a function of the rng
    assert (y != np.asarray(apply(1))).mean() > 0.1                       # new rng, new mask
    # Masks are independent along every axis (no repeated rows from a reused key).
    assert not np.array_equal(y[0] == 0, y[1] == 0)


def test_dropout_is_identity_when_deterministic_or_rate_zero():
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 8))
    np.testing.assert_array_equal(Dropout(0.3).apply({}, x, deterministic=True), x)
    np.testing.assert_array_equal(
        Dropout(0.0).apply({}, x, deterministic=False, rngs={"dropout": jax.random.PRNGKey(1)}), x)


def test_dropout_accepts_typed_keys():
    x = jnp.ones((16, 16))
    y = Dropout(0.5).apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(3)})
    assert 0.3 < float((y == 0).mean()) < 0.7


def test_dropout_masks_are_independent_across_positions_and_keys():
    # The keyed hash must behave like independent coin flips: for rate p, two positions (or two
    # keys at one position) are both dropped with probability p^2, not p (copies) or 0.
    rate, shape = 0.3, (256, 64, 64)
    keep = lambda seed: np.asarray(layers._dropout_bits_keep(  # noqa: E731
        jax.random.key_data(jax.random.PRNGKey(seed)).astype(jnp.uint32), shape, 1.0 - rate))
    drop0, drop1 = ~keep(0), ~keep(1)
    assert abs(drop0.mean() - rate) < 0.005
    for a, b in [(drop0[:, :, 1:], drop0[:, :, :-1]),      # neighbours along the last axis
                 (drop0[1:], drop0[:-1]),                  # along the first axis
                 (drop0, drop1),                           # two keys
                 (drop0[::2], drop0[1::2])]:               # rows of a flattened batch
        assert abs((a & b).mean() - rate ** 2) < 0.005
    # Over 8-bit windows the draws are still uniform: the mean of 8 neighbouring flags.
    counts = drop0.reshape(-1, 8).sum(axis=1)
    expected = np.array([math.comb(8, k) * rate ** k * (1 - rate) ** (8 - k) for k in range(9)])
    observed = np.bincount(counts, minlength=9) / counts.size
    np.testing.assert_allclose(observed, expected, atol=0.005)


def test_dropout_masks_of_2_to_the_32_elements_fall_back_to_the_bit_generator():
    key = jnp.zeros((4,), jnp.uint32)
    big = str(jax.make_jaxpr(lambda k: layers._dropout_bits_keep(k, (1 << 16, 1 << 16), 0.9))(key))
    small = str(jax.make_jaxpr(lambda k: layers._dropout_bits_keep(k, (1 << 16, 4), 0.9))(key))
    assert "rng_bit_generator" in big
    assert "rng_bit_generator" not in small


def _equations(jaxpr, name):
    """The equations of primitive `name` in a jaxpr, including those inside nested jaxprs."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == name:
            yield eqn
        for value in eqn.params.values():
            inner = getattr(value, "jaxpr", value)
            if hasattr(inner, "eqns"):
                yield from _equations(inner, name)


@pytest.mark.parametrize("n", [1, 2])
def test_tensordot_matches_float32_and_accumulates_in_float32_in_bfloat16(n):
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 5, 4, 8))
    w = jax.random.normal(jax.random.PRNGKey(1), (4, 8, 6) if n == 2 else (8, 2, 3))
    loss = lambda f, dtype: lambda x, w: (  # noqa: E731
        jnp.sin(f(x.astype(dtype), w.astype(dtype), n).astype(jnp.float32))).sum()
    np.testing.assert_array_equal(layers.tensordot(x, w, n), jnp.tensordot(x, w, n))
    ref_value, ref_grads = jax.value_and_grad(loss(jnp.tensordot, jnp.float32), (0, 1))(x, w)
    for wrap in (lambda f: f, jax.jit):  # op by op, and as one XLA program
        value, grads = wrap(jax.value_and_grad(loss(layers.tensordot, jnp.bfloat16), (0, 1)))(x, w)
        assert value == pytest.approx(float(ref_value), rel=2e-2, abs=0.1)
        for g, ref in zip(grads, ref_grads):
            assert g.dtype == jnp.float32 and g.shape == ref.shape
            np.testing.assert_allclose(g, ref, atol=0.05 * float(jnp.abs(ref).max()))
    # Every dot of the forward and backward pass takes bf16 operands and accumulates in f32.
    jaxpr = jax.make_jaxpr(jax.grad(loss(layers.tensordot, jnp.bfloat16), (0, 1)))(x, w)
    dots = list(_equations(jaxpr.jaxpr, "dot_general"))
    assert len(dots) == 3
    for e in dots:
        assert [v.aval.dtype for v in e.invars] == [jnp.bfloat16, jnp.bfloat16]
        assert e.params["preferred_element_type"] == jnp.float32


@pytest.mark.parametrize("shape", [(12, 5), (7, 16), (13, 11), (1, 6), (6, 1), (2, 2)])
def test_row_major_transpose_is_the_transpose(shape):
    # Shapes with an even, an odd and no axis to split (13 x 11: both prime).
    a = jax.random.normal(jax.random.PRNGKey(0), shape)
    np.testing.assert_array_equal(layers.row_major_transpose(a), a.T)
    np.testing.assert_array_equal(jax.jit(layers.row_major_transpose)(a), a.T)
    # As a bf16 weight-gradient operand, and transposed back, inside one compiled program.
    g = jax.random.normal(jax.random.PRNGKey(1), (shape[0], 9))

    @jax.jit
    def grad_t(a, g):
        d = jnp.dot(layers.row_major_transpose(a.astype(jnp.bfloat16)), g.astype(jnp.bfloat16),
                    preferred_element_type=jnp.float32)
        return layers.row_major_transpose(d)

    want = (a.T @ g).T
    np.testing.assert_allclose(grad_t(a, g), want, atol=0.05 * float(jnp.abs(want).max()))


def test_bfloat16_tensordot_gradient_of_a_transposed_kernel_compiles():
    # A tied decoder multiplies by embedding.T: its gradient is the weight-gradient dot,
    # transposed, which XLA may fold into the dot itself.
    k = jax.random.normal(jax.random.PRNGKey(0), (24, 16))
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 32, 16))
    low = lambda k, x: jnp.sin(layers.tensordot(  # noqa: E731
        x.astype(jnp.bfloat16), k.T.astype(jnp.bfloat16)).astype(jnp.float32)).sum()
    g = jax.jit(jax.grad(low))(k, x)
    ref = jax.grad(lambda k, x: jnp.sin(jnp.tensordot(x, k.T, 1)).sum())(k, x)
    np.testing.assert_allclose(g, ref, atol=0.05 * float(jnp.abs(ref).max()))


@pytest.mark.parametrize("features,in_axes", [(6, 1), ((2, 6), 2), ((3, 2, 4), 1)])
def test_dense_has_flax_parameters_and_outputs(features, in_axes):
    import flax.linen as nn
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 3, 4))
    init = nn.initializers.normal(0.5)
    ours = layers.Dense(features, kernel_init=init, bias_init=init, in_axes=in_axes)
    flax_layer = nn.DenseGeneral(features, axis=tuple(range(-in_axes, 0)), kernel_init=init,
                                 bias_init=init)
    params = ours.init(jax.random.PRNGKey(1), x)
    assert (jax.tree.map(jnp.shape, params)
            == jax.tree.map(jnp.shape, flax_layer.init(jax.random.PRNGKey(1), x)))
    np.testing.assert_allclose(ours.apply(params, x), flax_layer.apply(params, x), rtol=1e-5,
                               atol=1e-6)
    # Mixed precision: the same gradients to bf16 accuracy, every dot accumulating in f32.
    bf16 = layers.Dense(features, kernel_init=init, bias_init=init, in_axes=in_axes,
                        dtype=jnp.bfloat16)
    loss = lambda layer: lambda p: jnp.sin(layer.apply(p, x).astype(jnp.float32)).sum()  # noqa: E731
    ref, grads = jax.grad(loss(flax_layer))(params), jax.grad(loss(bf16))(params)
    for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref)):
        assert g.dtype == jnp.float32
        np.testing.assert_allclose(g, r, atol=0.03 * float(jnp.abs(r).max()))
    dots = list(_equations(jax.make_jaxpr(jax.grad(loss(bf16)))(params).jaxpr, "dot_general"))
    assert len(dots) == 3
    assert all(e.params["preferred_element_type"] == jnp.float32 for e in dots)


def test_add_bias_sums_the_bias_gradient_in_float32():
    y = jnp.zeros((64, 64, 3), jnp.bfloat16)
    bias = jnp.zeros((3,), jnp.float32)
    _, vjp = jax.vjp(layers.add_bias, y, bias)
    g_y, g_bias = vjp(jnp.ones_like(y))
    assert g_bias.dtype == jnp.float32
    np.testing.assert_array_equal(g_bias, [4096.0] * 3)
    np.testing.assert_array_equal(g_y, jnp.ones_like(y))
    # The sum is written in float32 (autodiff of the plain add sums bf16, which XLA:CPU runs
    # several times slower).
    sums = list(_equations(jax.make_jaxpr(vjp)(jnp.ones_like(y)).jaxpr, "reduce_sum"))
    assert sums and all(e.invars[0].aval.dtype == jnp.float32 for e in sums)
    plain = jax.vjp(lambda a, b: a + b.astype(a.dtype), y, bias)[1]
    assert any(e.invars[0].aval.dtype == jnp.bfloat16
               for e in _equations(jax.make_jaxpr(plain)(jnp.ones_like(y)).jaxpr, "reduce_sum"))
    # float32 matches autodiff of the plain add; a 2-axis bias works the same way.
    y32 = jax.random.normal(jax.random.PRNGKey(0), (4, 5, 2, 3))
    b32 = jax.random.normal(jax.random.PRNGKey(1), (2, 3))
    g = jax.random.normal(jax.random.PRNGKey(2), y32.shape)
    ours = jax.vjp(layers.add_bias, y32, b32)[1](g)
    plain = jax.vjp(lambda a, b: a + b, y32, b32)[1](g)
    for a, b in zip(ours, plain):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    with pytest.raises(ValueError, match="trailing axes"):
        layers.add_bias(y32, jnp.zeros((3, 2)))


def test_embed_is_nn_embed_and_its_constraints_fit_the_mesh(monkeypatch):
    # layers.Embed keeps nn.Embed's parameter and values; under a mesh its table is constrained
    # to (vocab, None), with the tensor axis dropped where it does not divide the rows (as the
    # parameter's own sharding is), rather than padded.
    import flax.linen as nn
    from jax.sharding import PartitionSpec as P

    from tl_jax import parallel

    ids = np.arange(32).reshape(8, 4) % 7
    init = nn.with_logical_partitioning(nn.initializers.normal(1.0), ("vocab", "embed"))
    for rows in (401, 1):
        ours = layers.Embed(rows, 6, embedding_init=init)
        params = nn.unbox(ours.init(jax.random.PRNGKey(0), ids % rows))
        theirs = nn.Embed(rows, 6).apply(params, ids % rows)
        np.testing.assert_array_equal(ours.apply(params, ids % rows), theirs)

    cfg = parallel.default_config()
    cfg.data, cfg.fsdp, cfg.tensor = 2, 2, 2
    mesh = parallel.make_mesh(cfg)
    seen = []

    def spy(x, spec):
        seen.append((x.shape, spec))
        return x

    ours = layers.Embed(401, 6, embedding_init=init)
    params = nn.unbox(ours.init(jax.random.PRNGKey(0), ids))
    monkeypatch.setattr(jax.lax, "with_sharding_constraint", spy)
    with parallel.mesh_context(mesh, parallel.axis_rules(cfg)):
        jax.eval_shape(lambda p: ours.apply(p, ids), params)
        jax.eval_shape(lambda p: layers.Embed(400, 6, embedding_init=init).apply(
            {"params": {"embedding": p}}, ids), params["params"]["embedding"][:400])
    assert seen == [((401, 6), P(None, None)), ((8, 4, 6), P(("data", "fsdp"), None, None)),
                    ((400, 6), P("tensor", None)), ((8, 4, 6), P(("data", "fsdp"), None, None))]
