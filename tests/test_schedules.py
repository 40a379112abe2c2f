"""STLR and discriminative learning-rate multipliers: values at given steps and shape properties."""
import math

import jax
import numpy as np
import pytest

from tl_jax.optim import schedules


def _stlr_reference(t, peak, total, cut_frac, ratio):
    """Eq. 3 of Howard & Ruder (2018), written independently of the implementation."""
    cut = math.floor(total * cut_frac)
    p = t / cut if t < cut else 1 - (t - cut) / (cut * (1 / cut_frac - 1))
    return peak * (1 + p * (ratio - 1)) / ratio


@pytest.mark.parametrize("total,cut_frac,ratio", [(1000, 0.1, 32.0), (250, 0.2, 10.0), (77, 0.5, 4.0)])
def test_stlr_matches_paper_formula(total, cut_frac, ratio):
    sched = schedules.slanted_triangular(0.01, total, cut_frac, ratio)
    # Up to T - 1: with an odd T the formula dips below peak / ratio at T, which we clip.
    for t in [0, 1, total // 7, math.floor(total * cut_frac), total // 2, total - 1]:
        np.testing.assert_allclose(float(sched(t)), _stlr_reference(t, 0.01, total, cut_frac, ratio),
                                   rtol=1e-5)


def test_stlr_endpoints_and_shape():
    peak, total, ratio = 0.01, 1000, 32.0
    sched = schedules.slanted_triangular(peak, total, 0.1, ratio)
    values = np.asarray(jax.vmap(sched)(np.arange(total + 50)))
    np.testing.assert_allclose(values[0], peak / ratio, rtol=1e-6)
    np.testing.assert_allclose(values[100], peak, rtol=1e-6)  # the peak is at cut = 100
    np.testing.assert_allclose(values[total], peak / ratio, rtol=1e-5)
    assert int(np.argmax(values)) == 100
    assert np.all(np.diff(values[:101]) > 0)  # strictly increasing up to the cut
    assert np.all(np.diff(values[100:total + 1]) < 0)  # strictly decreasing after it
    np.testing.assert_allclose(values[total:], peak / ratio, rtol=1e-5)  # flat after the end
    # The paper's decay is 9x longer than the increase (cut_frac = 0.1): compare the slopes.
    np.testing.assert_allclose((values[100] - values[0]) / 100,
                               9 * (values[100] - values[1000]) / 900, rtol=1e-4)


def test_stlr_rejects_bad_arguments():
    with pytest.raises(ValueError, match="cut_frac"):
        schedules.slanted_triangular(0.01, 100, cut_frac=1.5)
    with pytest.raises(ValueError, match="total_steps"):
        schedules.slanted_triangular(0.01, 0)
    with pytest.raises(ValueError, match="ratio"):
        schedules.slanted_triangular(0.01, 100, ratio=0.5)


def test_discriminative_multipliers_ulmfit():
    mults = schedules.discriminative_multipliers(5, 2.6)
    assert mults[-1] == 1.0
    for lower, upper in zip(mults, mults[1:]):
        np.testing.assert_allclose(upper / lower, 2.6, rtol=1e-12)
    np.testing.assert_allclose(mults[0], 2.6 ** -4)
    assert schedules.discriminative_multipliers(3, 1.0) == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="decay"):
        schedules.discriminative_multipliers(3, 0.0)
