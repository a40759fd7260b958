"""crysray.methods.torus: wrapping, frac <-> angle, Bessel ratios and von Mises entropy."""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
import torch

from crysray.methods.torus import (
    TWO_PI,
    angle_to_frac,
    bessel_ratio,
    frac_to_angle,
    log_i0,
    von_mises_entropy,
    wrap,
)

KAPPAS = [1e-6, 1e-3, 0.1, 1.0, 10.0, 100.0, 700.0, 1000.0, 5000.0, 1e4]


def _circular_frac_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    d = torch.remainder(a.double() - b.double(), 1.0)
    return torch.minimum(d, 1.0 - d)


# --- wrap ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_wrap_lands_in_range_and_is_idempotent(dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.cat(
        [
            (torch.rand(100_000, generator=g, dtype=torch.float64) * 40 - 20).to(dtype),
            torch.tensor([0.0, -0.0, 1.0, -1.0, math.pi / 2, -math.pi, 5.0, -5.0], dtype=dtype),
        ]
    )
    w = wrap(x)
    assert w.dtype == dtype
    assert bool((w >= -math.pi).all()) and bool((w < math.pi).all())
    assert torch.equal(wrap(w), w)
    # same point on the circle: x - w is a multiple of 2 pi (up to rounding of x itself)
    k = (x.double() - w.double()) / TWO_PI
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert torch.allclose(k, torch.round(k), rtol=0, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_wrap_is_identity_on_range(dtype):
    g = torch.Generator().manual_seed(1)
    inside = (torch.rand(100_000, generator=g, dtype=dtype) * 2 - 1) * 3.14159
    inside = torch.cat([inside, torch.tensor([-math.pi, 0.0, 3.0, -3.0], dtype=dtype)])
    assert torch.equal(wrap(inside), inside)


@pytest.mark.parametrize(
    "dtype, edge",
    [
        # values next to +-pi where a floor-based wrap rounds to just outside [-pi, pi)
        (torch.float64, [math.nextafter(math.pi, 0.0)]),
        (torch.float32, [3 * math.pi, -78.53981781]),
    ],
)
def test_wrap_rounding_edges(dtype, edge):
    x = torch.tensor(edge, dtype=dtype)
    w = wrap(x)
    assert bool((w >= -math.pi).all()) and bool((w < math.pi).all())
    assert torch.equal(wrap(w), w)


def test_wrap_exact_half_turns():
    x = torch.tensor([math.pi, -math.pi, 3 * math.pi, -3 * math.pi], dtype=torch.float64)
    w = wrap(x)
    assert torch.allclose(w, torch.full_like(w, -math.pi), rtol=0, atol=1e-14)


# --- frac <-> angle -------------------------------------------------------------------------


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-14), (torch.float32, 2e-7)])
def test_frac_angle_round_trip(dtype, tol):
    g = torch.Generator().manual_seed(2)
    f = torch.rand(10_000, generator=g, dtype=dtype)
    f = torch.cat([f, torch.tensor([0.0, 0.5, 0.25, 1 - 1e-7, 1 - 1e-12], dtype=dtype)])
    f = torch.cat([f, torch.nextafter(torch.ones(1, dtype=dtype), torch.zeros(1, dtype=dtype))])
    theta = frac_to_angle(f)
    assert bool((theta >= -math.pi).all()) and bool((theta <= math.pi).all())
    back = angle_to_frac(theta)
    assert bool((back >= 0).all()) and bool((back < 1).all())
    assert float(_circular_frac_distance(back, f).max()) < tol
    # frac_to_angle is 2 pi f - pi (as a point on the circle: float32 rounds 1 - 1e-12 to 1)
    expected = TWO_PI * f.double() - math.pi
    assert float(wrap(theta.double() - expected).abs().max()) < 10 * tol


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_angle_frac_round_trip(dtype):
    g = torch.Generator().manual_seed(3)
    theta = (torch.rand(10_000, generator=g, dtype=torch.float64) * 30 - 15).to(dtype)
    frac = angle_to_frac(theta)
    assert bool((frac >= 0).all()) and bool((frac < 1).all())
    back = frac_to_angle(frac)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert float(wrap(back.double() - theta.double()).abs().max()) < tol
    # periodic inputs: f and f + k give the same angle
    f = torch.rand(100, generator=g, dtype=torch.float64)
    for k in (-3, -1, 1, 7):
        assert torch.allclose(frac_to_angle(f + k), frac_to_angle(f), rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_angle_pi_maps_to_frac_zero(dtype):
    edge = torch.tensor([math.pi, -math.pi], dtype=dtype)
    frac = angle_to_frac(edge)
    assert torch.equal(frac, torch.zeros_like(frac))  # exactly 0.0, never 1.0
    # odd multiples of pi and the neighbours of +-pi: in [0, 1) and next to 0 on the circle
    below_pi = torch.nextafter(torch.tensor([math.pi], dtype=dtype), torch.zeros(1, dtype=dtype))
    odd = torch.tensor([3 * math.pi, -3 * math.pi, 101 * math.pi], dtype=dtype)
    near = angle_to_frac(torch.cat([below_pi, -below_pi, odd]))
    assert bool((near >= 0).all()) and bool((near < 1).all())
    assert float(_circular_frac_distance(near, torch.zeros_like(near)).max()) < 1e-5
    ones = frac_to_angle(torch.ones(3, dtype=dtype))
    assert torch.equal(angle_to_frac(ones), torch.zeros(3, dtype=dtype))


# --- Bessel functions -----------------------------------------------------------------------


def _mp_ratio(kappa: float) -> float:
    with mpmath.workdps(50):
        return float(mpmath.besseli(1, kappa) / mpmath.besseli(0, kappa))


def _mp_i0e(kappa: float) -> float:
    with mpmath.workdps(50):
        return float(mpmath.besseli(0, kappa) * mpmath.exp(-kappa))


def _mp_log_i0(kappa: float) -> float:
    with mpmath.workdps(50):
        return float(mpmath.log(mpmath.besseli(0, kappa)))


@pytest.mark.parametrize("kappa", KAPPAS)
def test_bessel_ratio_numpy_vs_mpmath(kappa):
    ref = _mp_ratio(kappa)
    scalar = bessel_ratio(kappa)
    array = bessel_ratio(np.array([kappa, kappa]))
    for value in (float(scalar), *array.tolist()):
        assert math.isfinite(value)
        assert abs(value - ref) <= 1e-10 * ref


def test_bessel_ratio_torch_float32_vs_mpmath():
    kappa = torch.tensor(KAPPAS, dtype=torch.float32)
    out = bessel_ratio(kappa)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    assert bool(torch.isfinite(out).all())
    # reference at the float32-rounded kappa, which is what the function actually receives
    ref = torch.tensor([_mp_ratio(k) for k in kappa.double().tolist()], dtype=torch.float64)
    rel = ((out.double() - ref) / ref).abs()
    assert float(rel.max()) < 1e-6


def test_bessel_ratio_torch_float64_and_zero():
    kappa = torch.tensor([0.0, *KAPPAS], dtype=torch.float64)
    out = bessel_ratio(kappa)
    assert out.dtype == torch.float64 and float(out[0]) == 0.0
    ref = torch.tensor([_mp_ratio(k) for k in KAPPAS], dtype=torch.float64)
    assert torch.allclose(out[1:], ref, rtol=1e-10, atol=0)


@pytest.mark.parametrize("kappa", KAPPAS)
def test_log_i0_vs_mpmath(kappa):
    ref = _mp_log_i0(kappa)
    value = float(log_i0(np.float64(kappa)))
    assert math.isfinite(value)
    # ln I0(k) = ln i0e(k) + k; near k = 0 (ln I0 ~ k^2/4) the sum cancels, so the relative
    # error there is limited to about 1e-16 / (k^2/4): the absolute error is what stays tiny.
    assert abs(value - ref) <= 1e-10 * abs(ref) + 1e-15


def test_log_i0_no_overflow_where_raw_i0_does():
    kappa = np.array([700.0, 1000.0, 5000.0, 1e4])
    with np.errstate(over="ignore"):
        assert not np.all(np.isfinite(np.log(np.i0(kappa))))  # the naive formula overflows
    out = log_i0(kappa)
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out, [_mp_log_i0(k) for k in kappa], rtol=1e-12)


# --- entropy --------------------------------------------------------------------------------


def test_von_mises_entropy_spec_values():
    assert float(von_mises_entropy(0.0)) == pytest.approx(math.log(TWO_PI), abs=1e-15)
    assert float(von_mises_entropy(0.0)) == pytest.approx(1.837877, abs=1e-6)
    assert float(von_mises_entropy(1000.0)) == pytest.approx(-2.034689, abs=1e-6)
    # large kappa: vM ~ N(0, 1/kappa), H ~ 0.5 ln(2 pi e / kappa)
    assert float(von_mises_entropy(1e6)) == pytest.approx(
        0.5 * math.log(TWO_PI * math.e / 1e6), abs=1e-6
    )


@pytest.mark.parametrize("kappa", [0.05, 0.5, 2.0, 10.0, 100.0, 1000.0])
def test_von_mises_entropy_vs_numerical_integration(kappa):
    # -int p ln p over one period; the trapezoidal rule is spectrally accurate for periodic
    # integrands, and 2^17 points resolve the width 1/sqrt(kappa) = 0.03 of kappa = 1000
    y = np.linspace(-math.pi, math.pi, 2**17, endpoint=False)
    log_p = kappa * (np.cos(y) - 1.0) - math.log(TWO_PI) - math.log(_mp_i0e(kappa))
    p = np.exp(log_p)
    dy = TWO_PI / y.size
    assert float(np.sum(p) * dy) == pytest.approx(1.0, abs=1e-12)
    numeric = float(-np.sum(p * log_p) * dy)
    assert float(von_mises_entropy(kappa)) == pytest.approx(numeric, abs=1e-10)


def test_von_mises_entropy_decreasing_and_vectorised():
    kappa = np.logspace(-4, 4, 200)
    h = von_mises_entropy(kappa)
    assert h.shape == kappa.shape
    assert np.all(np.isfinite(h)) and np.all(np.diff(h) < 0)
