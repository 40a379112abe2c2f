"""The chunked tied-embedding cross-entropy equals the plain formulation, values and gradients."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tl_jax.models.losses import tied_softmax_cross_entropy


def _problem(batch=3, length=13, width=8, vocab=50, seed=0):
    k = jax.random.split(jax.random.PRNGKey(seed), 4)
    hidden = jax.random.normal(k[0], (batch, length, width))
    embedding = jax.random.normal(k[1], (vocab, width))
    targets = jax.random.randint(k[2], (batch, length), 0, vocab)
    weights = (jax.random.uniform(k[3], (batch, length)) > 0.3).astype(jnp.float32)
    return hidden, embedding, targets, weights


def _reference(hidden, embedding, targets, weights, bias=None):
    logits = jnp.einsum("bte,ve->btv", hidden.astype(jnp.float32), embedding)
    if bias is not None:
        logits = logits + bias
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    return (nll * weights).sum(), jnp.argmax(logits, -1) == targets


# One token per chunk, chunks that do not divide the length (padding), and a single chunk;
# logits recomputed in the backward pass or kept from the forward; with and without a bias.
@pytest.mark.parametrize("chunk_elements", [1, 3 * 4 * 50, 10 ** 9, None])
@pytest.mark.parametrize("recompute", [True, False])
@pytest.mark.parametrize("with_bias", [False, True])
def test_matches_autodiff_of_plain_softmax_cross_entropy(chunk_elements, recompute, with_bias):
    hidden, embedding, targets, weights = _problem()
    bias = (jax.random.normal(jax.random.PRNGKey(7), (embedding.shape[0],)) if with_bias
            else None)

    def ours(h, e, b):
        nll, correct = tied_softmax_cross_entropy(
            h, e, targets, bias=b, chunk_elements=chunk_elements, recompute=recompute)
        return (nll * weights).sum(), correct

    def ref(h, e, b):
        return _reference(h, e, targets, weights, b)

    argnums = (0, 1, 2) if with_bias else (0, 1)
    (want, want_correct), want_grads = jax.value_and_grad(
        ref, argnums=argnums, has_aux=True)(hidden, embedding, bias)
    (got, got_correct), got_grads = jax.jit(jax.value_and_grad(
        ours, argnums=argnums, has_aux=True))(hidden, embedding, bias)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_array_equal(got_correct, want_correct)
    assert len(got_grads) == len(argnums)
    for g, w in zip(got_grads, want_grads):
        np.testing.assert_allclose(g, w, atol=1e-5)


def _dot_operand_dtypes(jaxpr):
    """(operand dtypes, preferred_element_type) of every dot_general, nested jaxprs included."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            yield tuple(v.aval.dtype for v in eqn.invars), eqn.params["preferred_element_type"]
        for value in eqn.params.values():
            for inner in (value if isinstance(value, (tuple, list)) else [value]):
                inner = getattr(inner, "jaxpr", inner)
                if hasattr(inner, "eqns"):
                    yield from _dot_operand_dtypes(inner)


@pytest.mark.parametrize("recompute,chunk_elements", [(True, 3 * 4 * 50), (False, 3 * 4 * 50),
                                                      (True, 1 << 21)])
def test_bfloat16_hidden_runs_bfloat16_dots_with_float32_sums(recompute, chunk_elements):
    # Several chunks, and one (the loop disappears and XLA sees the whole backward pass at once:
    # the layout of the embedding gradient once made it fold into an unsupported bf16 dot).
    hidden, embedding, targets, weights = _problem()

    def loss(h, e):
        nll, _ = tied_softmax_cross_entropy(h, e, targets, chunk_elements=chunk_elements,
                                            recompute=recompute)
        return (nll * weights).sum()

    value, (g_hidden, g_embedding) = jax.jit(jax.value_and_grad(loss, (0, 1)))(
        hidden.astype(jnp.bfloat16), embedding)
    assert value.dtype == jnp.float32
    assert g_hidden.dtype == jnp.bfloat16 and g_embedding.dtype == jnp.float32
    want, (w_hidden, w_embedding) = jax.value_and_grad(
        lambda h, e: _reference(h, e, targets, weights)[0], (0, 1))(hidden, embedding)
    assert float(value) == pytest.approx(float(want), rel=2e-2)
    np.testing.assert_allclose(np.asarray(g_hidden, np.float32), w_hidden,
                               atol=0.03 * float(jnp.abs(w_hidden).max()))
    np.testing.assert_allclose(g_embedding, w_embedding,
                               atol=0.03 * float(jnp.abs(w_embedding).max()))
    # Mixed precision: logits, d_hidden and d_embedding are bf16 x bf16 dots summing in f32
    # (XLA:CPU runs those on the AMX/bf16 units; an f32 dot would run at f32 speed).
    jaxpr = jax.make_jaxpr(jax.grad(loss, (0, 1)))(hidden.astype(jnp.bfloat16), embedding)
    dots = list(_dot_operand_dtypes(jaxpr.jaxpr))
    assert len(dots) == (4 if recompute else 3)
    assert all(d == ((jnp.bfloat16, jnp.bfloat16), jnp.float32) for d in dots)
    # float32 hidden states keep float32 operands.
    jaxpr = jax.make_jaxpr(jax.grad(loss, (0, 1)))(hidden, embedding)
    assert all(d == ((jnp.float32, jnp.float32), jnp.float32)
               for d in _dot_operand_dtypes(jaxpr.jaxpr))


def test_shape_errors_name_the_shapes():
    hidden, embedding, targets, _ = _problem()
    with pytest.raises(ValueError, match=r"targets \(B, T\)"):
        tied_softmax_cross_entropy(hidden, embedding, targets[:, :-1])
    with pytest.raises(ValueError, match=r"embedding must be \(V, 8\)"):
        tied_softmax_cross_entropy(hidden, embedding[:, :-1], targets)
    with pytest.raises(ValueError, match=r"bias must be \(50,\)"):
        tied_softmax_cross_entropy(hidden, embedding, targets, bias=jnp.zeros(49))


def test_same_result_with_batch_and_vocabulary_sharded_over_a_mesh():
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    devices = np.array(jax.devices()[:8]).reshape(4, 2)
    mesh = Mesh(devices, ("data", "tensor"))
    hidden, embedding, targets, weights = _problem(batch=8, length=12, width=8, vocab=64)

    def loss(h, e, t, w):
        return (tied_softmax_cross_entropy(h, e, t, chunk_elements=8 * 5 * 64)[0] * w).sum()

    want = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(hidden, embedding, targets, weights)
    put = lambda x, spec: jax.device_put(x, NamedSharding(mesh, spec))  # noqa: E731
    got = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(
        put(hidden, P("data")), put(embedding, P("tensor")), put(targets, P("data")),
        put(weights, P("data")))
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
    for g, w in zip(got[1], want[1]):
        np.testing.assert_allclose(g, w, atol=1e-5)



def test_float32_embedding_gradient_is_not_a_first_axis_contraction():
    # With several chunks a per-chunk `h^T d_logits` transposed to (V, E) was folded by XLA into
    # a dot contracting the first axis of both operands, which XLA:CPU runs outside its fast
    # matmul library (~3x slower at GPT tiny's head); the sum is now kept (E, V). (With one
    # chunk the folded form stays on purpose: a large final transpose costs more there.)
    hidden, embedding, targets, _ = _problem(batch=4, length=16, width=8, vocab=50)

    def loss(h, e):
        nll, _ = tied_softmax_cross_entropy(h, e, targets, chunk_elements=3 * 4 * 50)
        return nll.sum()

    hlo = jax.jit(jax.grad(loss, (0, 1))).lower(hidden, embedding).compile().as_text()
    first_axis = [line.strip()[:160] for line in hlo.splitlines()
                  if " dot(" in line and "lhs_contracting_dims={0}" in line]
    assert not first_axis, first_axis
