"""Shared layers: the RngBitGenerator dropout."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

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
