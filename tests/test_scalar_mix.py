"""ELMo scalar mix: starts as the average, softmax weights and gamma, masked layer norm, grads."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tl_jax.models.scalar_mix import ScalarMix


def _layers(n=3, shape=(2, 5, 4), seed=0):
    keys = jax.random.split(jax.random.PRNGKey(seed), n)
    return [jax.random.normal(k, shape) * (i + 1) for i, k in enumerate(keys)]


def test_initial_mix_is_the_average_and_weights_follow_softmax():
    layers = _layers()
    mix = ScalarMix(3)
    params = mix.init(jax.random.PRNGKey(0), layers)["params"]
    np.testing.assert_allclose(mix.apply({"params": params}, layers),
                               sum(layers) / 3, rtol=1e-5, atol=1e-6)
    params = {"scalars": jnp.array([0.0, 1.0, -2.0]), "gamma": jnp.array(2.5)}
    w = np.exp([0.0, 1.0, -2.0]) / np.exp([0.0, 1.0, -2.0]).sum()
    expected = 2.5 * sum(wi * x for wi, x in zip(w, layers))
    np.testing.assert_allclose(mix.apply({"params": params}, layers), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ScalarMix.weights(params), w, rtol=1e-6)


def test_layer_norm_ignores_padding():
    """With the mask, a sentence's mix does not depend on what sits in its padding."""
    layers = _layers(shape=(1, 6, 4))
    mask = jnp.array([[1, 1, 1, 1, 0, 0]])
    noisy = [x.at[:, 4:].set(100.0) for x in layers]
    mix = ScalarMix(3, layer_norm=True)
    params = mix.init(jax.random.PRNGKey(0), layers, mask)["params"]
    a = mix.apply({"params": params}, layers, mask)[:, :4]
    b = mix.apply({"params": params}, noisy, mask)[:, :4]
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    # Each normalised layer has zero mean and unit variance over the real tokens, so the
    # average of three of them has zero mean.
    np.testing.assert_allclose(float(a.mean()), 0.0, atol=1e-5)


def test_gradients_reach_scalars_and_gamma_and_errors():
    layers = _layers()
    mix = ScalarMix(3, initial_scalars=(0.0, 0.5, 1.0))
    params = mix.init(jax.random.PRNGKey(0), layers)["params"]
    np.testing.assert_allclose(params["scalars"], [0.0, 0.5, 1.0])
    grads = jax.grad(lambda p: jnp.sum(mix.apply({"params": p}, layers) ** 2))(params)
    assert np.all(np.abs(np.asarray(grads["scalars"])) > 0) and abs(float(grads["gamma"])) > 0
    fixed = ScalarMix(3, trainable_gamma=False, initial_gamma=2.0)
    assert set(fixed.init(jax.random.PRNGKey(0), layers)["params"]) == {"scalars"}
    with pytest.raises(ValueError, match="built for 3 layers but got 2"):
        mix.apply({"params": params}, layers[:2])


def test_layer_norm_stats_per_example_by_default_or_per_batch_as_allennlp():
    """"example": each sentence normalised on its own; "batch": one mean/variance per layer over
    every unpadded entry of the batch, as bilm-tf's weight_layers and AllenNLP's ScalarMix."""
    layers = _layers(n=2, shape=(2, 5, 4))
    layers = [x.at[1].multiply(10.0).at[1].add(3.0) for x in layers]  # sentence 2 on another scale
    mask = jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    m = np.asarray(mask, np.float32)[:, :, None]
    for stats in ("example", "batch"):
        mix = ScalarMix(2, layer_norm=True, layer_norm_stats=stats)
        params = mix.init(jax.random.PRNGKey(0), layers, mask)["params"]
        out = np.asarray(mix.apply({"params": params}, layers, mask))
        expected = 0.0
        for x in layers:
            x = np.asarray(x)
            axes = (1, 2) if stats == "example" else (0, 1, 2)
            n = (m * np.ones_like(x)).sum(axis=axes, keepdims=True)
            mean = (x * m).sum(axis=axes, keepdims=True) / n
            var = (((x - mean) * m) ** 2).sum(axis=axes, keepdims=True) / n
            expected = expected + 0.5 * (x - mean) / np.sqrt(var + 1e-12)
        np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
    # Per example, sentence 1's features do not depend on its batch-mate; per batch they do.
    alone = [x[:1] for x in layers]
    for stats, same in (("example", True), ("batch", False)):
        mix = ScalarMix(2, layer_norm=True, layer_norm_stats=stats)
        params = mix.init(jax.random.PRNGKey(0), layers, mask)["params"]
        a = np.asarray(mix.apply({"params": params}, layers, mask))[0, :3]
        b = np.asarray(mix.apply({"params": params}, alone, mask[:1]))[0, :3]
        assert np.allclose(a, b, atol=1e-4) == same
    with pytest.raises(ValueError, match="layer_norm_stats"):
        ScalarMix(2, layer_norm=True, layer_norm_stats="token").init(
            jax.random.PRNGKey(0), layers, mask)
