"""crysray.methods.schedule: the linear-entropy accuracy schedule (docs/methods.md C2)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from crysray.methods import schedule
from crysray.methods.schedule import (
    expected_resultant,
    linear_entropy_alphas,
    solve_alphas,
    target_concentrations,
)
from crysray.methods.torus import bessel_ratio, von_mises_entropy

BETA1 = 1e3


@pytest.fixture(scope="module")
def alphas_1000() -> np.ndarray:
    return solve_alphas(1000, BETA1)


def _entropy(kappa):
    return np.asarray(von_mises_entropy(np.asarray(kappa, dtype=np.float64)))


def _linear_targets(steps: int, beta1: float) -> np.ndarray:
    h0, h1 = float(_entropy(0.0)), float(_entropy(beta1))
    return h0 + (h1 - h0) * np.arange(1, steps + 1) / steps


def test_solve_alphas_reproduces_reference_schedule(alphas_1000):
    a = alphas_1000
    assert a.shape == (1000,) and a.dtype == np.float64 and np.all(np.isfinite(a))
    assert np.all(a > 0)
    # docs C2: values of the reference cache file linear_entropy_alphas_s1000_1000.0.pt
    assert a[0] == pytest.approx(0.1246, rel=1e-3)
    # the reference solved against a noisy 1e5-sample objective: ~1% scatter in the flat part
    assert a[99] == pytest.approx(0.1260, rel=2e-2)
    assert a[499] == pytest.approx(0.570, rel=1e-2)
    assert a[899] == pytest.approx(4.10, rel=1e-2)
    assert a[999] == pytest.approx(8.224, rel=1e-2)
    assert a.sum() == pytest.approx(1374.9, rel=1e-2)
    assert a.sum() > BETA1  # accuracies are not additive on the circle
    # non-monotone start: rises to ~0.143 within the first 5 steps, then dips
    assert np.argmax(a[:20]) in range(1, 5)
    assert a[:5].max() == pytest.approx(0.143, rel=2e-2)
    assert a[20] < a[:5].max()
    assert np.all(np.diff(a[200:]) > 0)


def test_alpha_1_is_beta_1(alphas_1000):
    betas = target_concentrations(1000, BETA1)
    assert alphas_1000[0] == betas[0]


@pytest.mark.parametrize("steps", [1, 7, 50, 1000])
def test_target_concentrations_give_linear_entropy(steps):
    betas = target_concentrations(steps, BETA1)
    assert betas.shape == (steps,)
    assert betas[-1] == BETA1
    assert np.all(np.diff(betas) > 0) and betas[0] > 0
    h = _entropy(np.concatenate([[0.0], betas]))
    steps_h = np.diff(h)
    expected_step = (float(_entropy(BETA1)) - float(_entropy(0.0))) / steps
    np.testing.assert_allclose(steps_h, expected_step, rtol=0, atol=1e-9)
    np.testing.assert_allclose(h[1:], _linear_targets(steps, BETA1), rtol=0, atol=1e-9)


def test_target_concentrations_other_beta1():
    for beta1 in (100.0, 1e4):
        betas = target_concentrations(20, beta1)
        assert betas[-1] == beta1
        np.testing.assert_allclose(_entropy(betas), _linear_targets(20, beta1), rtol=0, atol=1e-9)


def test_expected_resultant_closed_forms():
    # prev = 0: |alpha e^{i eps}| = alpha exactly
    for alpha in (1e-3, 0.1246, 3.0, 500.0):
        assert expected_resultant(0.0, alpha) == pytest.approx(alpha, rel=1e-12)
    # alpha -> 0: the observation is a point at alpha ~ 0, so the resultant stays prev
    assert expected_resultant(5.0, 1e-9) == pytest.approx(5.0, rel=1e-8)
    # Jensen and the triangle inequality: prev + alpha A(alpha) <= E|...| <= prev + alpha
    for prev, alpha in [(0.5, 0.2), (3.0, 3.0), (10.0, 50.0), (900.0, 8.0)]:
        value = expected_resultant(prev, alpha)
        assert prev + alpha * float(bessel_ratio(alpha)) <= value <= prev + alpha


@pytest.mark.parametrize(
    "prev, alpha",
    [(0.1246, 0.139), (1.49, 0.57), (10.0, 4.1), (0.5, 2.0), (100.0, 30.0), (500.0, 500.0)],
)
def test_expected_resultant_vs_monte_carlo(prev, alpha):
    rng = np.random.default_rng(12345)
    eps = rng.vonmises(0.0, alpha, size=200_000)
    lengths = np.abs(prev + alpha * np.exp(1j * eps))
    mc, se = lengths.mean(), lengths.std(ddof=1) / math.sqrt(lengths.size)
    assert abs(expected_resultant(prev, alpha) - mc) < 4 * se


def _simulate_mean_concentration(alphas: np.ndarray, walks: int, seed: int) -> np.ndarray:
    """E[c_i], i = 1..N, of the real flow: c_i = |sum_{j<=i} alpha_j e^{i eps_j}|."""
    rng = np.random.default_rng(seed)
    eps = rng.vonmises(0.0, np.broadcast_to(alphas, (walks, alphas.size)))
    return np.abs(np.cumsum(alphas * np.exp(1j * eps), axis=1)).mean(axis=0)


# The schedule assumes the previous belief sits exactly on x, so the real flow's mean
# concentration falls a little short in the middle (docs C2): the entropy of E[c_i] sits at
# most ~0.11 nats above the linear target with the solved alphas (N = 20 and 50), while naive
# alphas beta_i - beta_{i-1} overshoot by 0.45 (N = 20) to 0.77 nats (N = 50).
ENTROPY_TOL = 0.15


def _flow_entropy_ok(alphas: np.ndarray, steps: int) -> tuple[bool, float, float]:
    mean_c = _simulate_mean_concentration(alphas, walks=4000, seed=steps)
    h = _entropy(mean_c)
    excess = h - _linear_targets(steps, BETA1)
    ok = (
        abs(mean_c[-1] / BETA1 - 1) < 0.02
        and bool(np.all(np.diff(h) < 0))
        and float(excess.max()) < ENTROPY_TOL
        and float(excess.min()) > -0.02  # never more concentrated than the target
    )
    return ok, float(mean_c[-1]), float(excess.max())


@pytest.mark.parametrize("steps", [20, 50])
def test_real_flow_follows_linear_entropy(steps):
    alphas = solve_alphas(steps, BETA1)
    ok, c_last, worst = _flow_entropy_ok(alphas, steps)
    assert ok, f"E[c_N] = {c_last:.1f}, max entropy excess {worst:.3f} nats"
    # the same criterion rejects the naive schedule, so it has the power to catch a bad one
    betas = target_concentrations(steps, BETA1)
    naive = np.diff(np.concatenate([[0.0], betas]))
    naive_ok, _, naive_worst = _flow_entropy_ok(naive, steps)
    assert not naive_ok and naive_worst > 2 * ENTROPY_TOL


# --- on-disk cache ------------------------------------------------------------------------


@pytest.fixture
def clean_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("CRYSRAY_CACHE", str(tmp_path))
    linear_entropy_alphas.cache_clear()
    yield tmp_path
    linear_entropy_alphas.cache_clear()


def test_linear_entropy_alphas_caches_on_disk(clean_cache, monkeypatch):
    path = clean_cache / "schedules" / "vm_linear_entropy_n12_beta1000.npy"
    assert not path.exists()
    first = linear_entropy_alphas(12, BETA1)
    assert path.exists()
    np.testing.assert_array_equal(np.load(path), first)
    np.testing.assert_array_equal(first, solve_alphas(12, BETA1))  # deterministic solve
    assert not list(path.parent.glob("*.tmp.npy"))  # the atomic write left no temp file

    # a fresh process (empty memory cache) reads the file instead of solving again
    linear_entropy_alphas.cache_clear()

    def fail(*args, **kwargs):
        raise AssertionError("solve_alphas called despite a valid cache file")

    monkeypatch.setattr(schedule, "solve_alphas", fail)
    second = linear_entropy_alphas(12, BETA1)
    np.testing.assert_array_equal(second, first)
    assert second.dtype == np.float64 and second.shape == (12,)


def test_linear_entropy_alphas_memory_cache(clean_cache):
    first = linear_entropy_alphas(6, BETA1)
    (clean_cache / "schedules" / "vm_linear_entropy_n6_beta1000.npy").unlink()
    assert linear_entropy_alphas(6, BETA1) is first  # served from memory
    info = linear_entropy_alphas.cache_info()
    assert info.hits == 1 and info.misses == 1


def test_linear_entropy_alphas_replaces_bad_cache_file(clean_cache):
    path = clean_cache / "schedules" / "vm_linear_entropy_n8_beta1000.npy"
    path.parent.mkdir(parents=True)
    np.save(path, np.full(8, np.nan))  # corrupt
    alphas = linear_entropy_alphas(8, BETA1)
    np.testing.assert_array_equal(alphas, solve_alphas(8, BETA1))
    np.testing.assert_array_equal(np.load(path), alphas)
    linear_entropy_alphas.cache_clear()
    np.save(path, np.ones(5))  # wrong length
    np.testing.assert_array_equal(linear_entropy_alphas(8, BETA1), alphas)


def test_linear_entropy_alphas_explicit_cache_dir(clean_cache, tmp_path_factory):
    other = tmp_path_factory.mktemp("explicit")
    linear_entropy_alphas(4, 100.0, str(other))
    assert (other / "schedules" / "vm_linear_entropy_n4_beta100.npy").exists()
    assert not (clean_cache / "schedules").exists()


@pytest.mark.parametrize("steps", [0, -1, -100])
def test_linear_entropy_alphas_rejects_nonpositive_steps(clean_cache, steps):
    with pytest.raises(ValueError, match=rf"number of steps must be >= 1, got {steps}"):
        linear_entropy_alphas(steps, BETA1)
    assert not (clean_cache / "schedules").exists()


def test_single_step_schedule():
    np.testing.assert_array_equal(solve_alphas(1, BETA1), [BETA1])
