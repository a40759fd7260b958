"""KLDM maths: kernel vs SDE simulation, wrapped-normal score, mean-free noise, lattice, steps."""

from __future__ import annotations

import math

import mpmath
import pytest
import torch

from crysray.methods import kldm_lattice as lat
from crysray.methods import kldm_process as kp
from crysray.methods.torus import wrap
from crysray.methods.wrapped_normal import log_wrapped_normal, wn_normaliser, wrapped_normal_score

NUM_ATOMS = torch.tensor([1, 2, 5, 7, 12])


def _batch(num_atoms=NUM_ATOMS):
    return torch.repeat_interleave(torch.arange(len(num_atoms)), num_atoms), len(num_atoms)


def _simulate_sde(t: float, paths: int, steps: int, seed: int):
    """dr = v dt, dv = -v dt + sqrt(2) dW from r = v = 0, Euler-Maruyama in float64.

    r uses the trapezoid of v so its O(dt) bias does not dominate the tiny small-t variance.
    """
    g = torch.Generator().manual_seed(seed)
    dt = t / steps
    r = torch.zeros(paths, dtype=torch.float64)
    v = torch.zeros(paths, dtype=torch.float64)
    for _ in range(steps):
        v_new = (
            v - v * dt + math.sqrt(2 * dt) * torch.randn(paths, generator=g, dtype=torch.float64)
        )
        r += 0.5 * (v + v_new) * dt
        v = v_new
    return r, v


def _check_moments(r, v, t, n_sigma=5.0):
    tt = torch.tensor(t, dtype=torch.float64)
    n = r.numel()
    var_r, var_v, cov = kp.var_r_marginal(tt), kp.var_v(tt), kp.cov_rv(tt)
    assert abs(r.mean()) < n_sigma * math.sqrt(var_r / n)
    assert abs(v.mean()) < n_sigma * math.sqrt(var_v / n)
    # standard errors of Gaussian second moments
    assert abs(r.var() - var_r) < n_sigma * var_r * math.sqrt(2 / n)
    assert abs(v.var() - var_v) < n_sigma * var_v * math.sqrt(2 / n)
    c = ((r - r.mean()) * (v - v.mean())).mean()
    assert abs(c - cov) < n_sigma * math.sqrt((var_r * var_v + cov**2) / n)


@pytest.mark.parametrize("t", [0.05, 1.5])
def test_kernel_matches_sde_simulation(t):
    r, v = _simulate_sde(t, paths=100_000, steps=600, seed=1)
    _check_moments(r, v, t)
    # the conditional law used for training: regression of r on v has slope a(t), residual sigma_r^2
    tt = torch.tensor(t, dtype=torch.float64)
    slope = (r * v).mean() / (v * v).mean()
    resid = (r - slope * v).var()
    se_slope = math.sqrt(kp.var_r_conditional(tt) / kp.var_v(tt) / r.numel())
    assert abs(slope - kp.drift_coef(tt)) < 5 * se_slope
    assert abs(resid - kp.var_r_conditional(tt)) < 5 * kp.var_r_conditional(tt) * math.sqrt(
        2 / r.numel()
    )


@pytest.mark.parametrize("t", [0.05, 1.5])
def test_forward_draw_has_the_joint_law(t):
    """sample_forward (v from its marginal, r given v) reproduces the SDE's joint (r, v)."""
    n = 100_000  # one crystal: centring shrinks variances by (1 - 1/n), far below the tolerance
    g = torch.Generator().manual_seed(2)
    tt = torch.full((n, 1), t, dtype=torch.float64)
    draw = kp.sample_forward(
        torch.zeros(n, 3, dtype=torch.float64),
        tt,
        torch.zeros(n, dtype=torch.long),
        1,
        generator=g,
        eps=0.0,
    )
    _check_moments(draw.r[:, 0], draw.v_t[:, 0], t)
    assert torch.allclose(draw.x_t, wrap(draw.r))


def test_small_t_variances_are_accurate_in_float32():
    ts = [1e-5, 1e-4, 1e-3, 1e-2, 0.05, 0.0999, 0.1, 0.1001, 0.3, 1.0, 2.0]
    mpmath.mp.dps = 50
    for t in ts:
        t32 = torch.tensor(t, dtype=torch.float32)
        tm = mpmath.mpf(float(t32))
        exact_cond = 2 * tm - 4 * mpmath.tanh(tm / 2)
        exact_marg = 2 * tm - 3 + 4 * mpmath.exp(-tm) - mpmath.exp(-2 * tm)
        exact_v = 1 - mpmath.exp(-2 * tm)
        for got, exact in [
            (kp.var_r_conditional(t32), exact_cond),
            (kp.var_r_marginal(t32), exact_marg),
            (kp.var_v(t32), exact_v),
        ]:
            assert got.dtype == torch.float32
            assert abs(float(got) / float(exact) - 1) < 1e-6, (t, float(got), float(exact))
    # the released float32 form 2t + 8/(1+e^t) - 4 is what this catches (docs/methods.md K6.2)
    t = torch.tensor(0.02, dtype=torch.float32)
    naive = 2 * t + 8 / (1 + torch.exp(t)) - 4
    assert abs(float(naive) / float(kp.var_r_conditional(t)) - 1) > 0.1


def test_wrapped_normal_score_is_minus_grad_log_density():
    g = torch.Generator().manual_seed(3)
    d = (torch.rand(400, generator=g, dtype=torch.float64) * 2 - 1) * math.pi
    d = torch.cat([d, torch.tensor([-math.pi, math.pi - 1e-9, 0.0], dtype=torch.float64)])
    for sigma in [0.05, 0.3, 1.0, 2.0, 4.0]:
        x = d.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(log_wrapped_normal(x, sigma).sum(), x)
        torch.testing.assert_close(wrapped_normal_score(d, sigma), -grad, rtol=1e-9, atol=1e-9)
    # periodic, and the Gaussian score d / sigma^2 when images are negligible
    torch.testing.assert_close(
        wrapped_normal_score(d + 2 * math.pi, 0.7), wrapped_normal_score(d, 0.7)
    )
    small = d[d.abs() < 0.1]
    torch.testing.assert_close(wrapped_normal_score(small, 0.05), small / 0.05**2)


def test_velocity_score_is_grad_of_log_joint():
    """s_v = -v/sigma_v^2 + a sqrt(lambda) y with y = S_WN/sqrt(lambda) is d/dv log p(x_t, v_t)."""
    lam = kp.LambdaTable()
    g = torch.Generator().manual_seed(4)
    t = torch.tensor([[0.02], [0.3], [1.0], [1.9]], dtype=torch.float64).expand(-1, 3)
    v = torch.randn(t.shape, generator=g, dtype=torch.float64).requires_grad_(True)
    r = torch.randn(t.shape, generator=g, dtype=torch.float64) * 2  # any displacement, mod 2 pi
    sig_v, sig_r, a = kp.sigma_v(t), kp.sigma_r(t), kp.drift_coef(t)
    log_p = (-0.5 * (v / sig_v) ** 2 + log_wrapped_normal(wrap(r - a * v), sig_r)).sum()
    (grad,) = torch.autograd.grad(log_p, v)
    y = wrapped_normal_score(r - a * v.detach(), sig_r) / torch.sqrt(lam(t))
    torch.testing.assert_close(kp.velocity_score(v.detach(), y, t, lam), grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("sigma", [0.1, 0.5, 1.0, 2.0])
def test_normaliser_matches_monte_carlo(sigma):
    g = torch.Generator().manual_seed(5)
    n = 200_000
    d = wrap(sigma * torch.randn(n, generator=g, dtype=torch.float64))
    s2 = wrapped_normal_score(d, sigma) ** 2
    assert abs(s2.mean() - wn_normaliser(torch.tensor(sigma))) < 5 * s2.std() / math.sqrt(n)


def test_lambda_table_interpolates_the_direct_value():
    lam = kp.LambdaTable()
    t = torch.tensor([0.0, 1e-4, 0.0123, 0.37, 1.0, 1.99911, 2.0], dtype=torch.float64)
    direct = wn_normaliser(kp.sigma_r(t))
    torch.testing.assert_close(lam(t), direct, rtol=2e-3, atol=0.0)
    assert torch.isfinite(lam(t)).all() and lam(t.float()).dtype == torch.float32


def test_noise_and_targets_are_mean_free_per_crystal():
    batch_idx, b = _batch()
    g = torch.Generator().manual_seed(6)
    x0 = wrap(torch.randn(len(batch_idx), 3, generator=g) * 3)
    t = kp.t_per_atom(kp.tdm_time(torch.tensor([0.1, 0.001, 0.5, 0.9, 1.0])), batch_idx)
    draw = kp.sample_forward(x0, t, batch_idx, b, generator=g)
    lam = kp.LambdaTable()
    fields = {
        "eps_v": draw.eps_v,
        "eps_r": draw.eps_r,
        "v_t": draw.v_t,
        "r": draw.r,
        "simplified": kp.simplified_target(draw, t, batch_idx, b, lam),
        "full": kp.full_score_target(draw, t, batch_idx, b),
    }
    for name, f in fields.items():
        means = torch.zeros(b, 3).index_add_(0, batch_idx, f)
        assert torch.allclose(means, torch.zeros(b, 3), atol=1e-4), name
        assert f.abs().sum() > 0, name
    assert (draw.x_t >= -math.pi).all() and (draw.x_t < math.pi).all()
    # the one-atom crystal has no relative motion at all
    assert draw.r[0].abs().max() == 0
    # both parameterisations describe one score; without the floor it is -eps_v / sigma_v + ...
    full = kp.velocity_score(draw.v_t, fields["simplified"], t, lam)
    torch.testing.assert_close(fields["full"], full)
    wn = fields["full"] + draw.eps_v / torch.sqrt(kp.var_v(t) + kp.SQRT_EPS)
    assert (wn - kp.drift_coef(t) * kp.wn_term(draw, t, batch_idx, b)).abs().max() < 1e-3
    # when images are negligible the simplified target is +eps_r (S_WN has the sign of r - mu_r;
    # docs/methods.md K1.5: +eps_r; -eps_r would contradict the definition of S_WN)
    small = batch_idx == 1  # tau = 0.001
    y = kp.simplified_target(draw, t, batch_idx, b, lam)
    assert small.any()
    torch.testing.assert_close(y[small], draw.eps_r[small], rtol=1e-3, atol=1e-3)


# --- lattice -------------------------------------------------------------------------------


def _random_lattices(n, g):
    lengths = 3 + 7 * torch.rand(n, 3, generator=g, dtype=torch.float64)
    angles = torch.deg2rad(60 + 60 * torch.rand(n, 3, generator=g, dtype=torch.float64))
    ok = angles.sum(-1) < 2 * math.pi - 0.3  # keep the three angles a realisable cell
    ok &= (angles[:, 0] < angles[:, 1] + angles[:, 2]) & (
        angles[:, 1] < angles[:, 0] + angles[:, 2]
    )
    ok &= angles[:, 2] < angles[:, 0] + angles[:, 1]
    return lengths[ok], angles[ok]


def test_lattice_params_round_trip():
    g = torch.Generator().manual_seed(7)
    lengths, angles = _random_lattices(200, g)
    lattice = lat.params_to_lattice(lengths, angles)
    got_l, got_a = lat.lattice_to_params(lattice)
    torch.testing.assert_close(got_l, lengths)
    torch.testing.assert_close(got_a, angles)
    rot = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64)).Q
    num_atoms = torch.randint(1, 30, (len(lengths),), generator=g)
    stats = lat.LatticeStats.from_table(num_atoms, lengths, min_count=3)
    l6 = lat.encode_lattice(lattice @ rot, num_atoms, stats)  # rotation-invariant representation
    torch.testing.assert_close(l6, lat.encode_lattice(lattice, num_atoms, stats))
    back = lat.decode_lattice(l6, num_atoms, stats)
    torch.testing.assert_close(back, lattice)


def test_lattice_stats_thin_and_unseen_counts_are_finite():
    g = torch.Generator().manual_seed(8)
    num_atoms = torch.cat(
        [torch.full((300,), 4), torch.full((300,), 5), torch.full((3,), 6), torch.full((1,), 10)]
    )
    lengths = torch.exp(
        torch.randn(len(num_atoms), 3, generator=g, dtype=torch.float64) * 0.2 + 1.5
    )
    lengths[num_atoms == 4] *= 0.5  # two distinct bins: theirs must differ from the pool
    stats = lat.LatticeStats.from_table(num_atoms, lengths)
    query = torch.tensor([4, 6, 10, 7, 0, 11, 500])
    loc, scale = stats.lookup(query)
    assert torch.isfinite(loc).all() and torch.isfinite(scale).all() and (scale > 0).all()
    for i in range(1, len(query)):  # thin (6, 10) and unseen (7, 0, 11, 500) use the pool
        torch.testing.assert_close(loc[i], stats.pooled_loc)
    assert (loc[0] - stats.pooled_loc).abs().min() > 0.1
    restored = lat.LatticeStats.from_dict(stats.to_dict())
    torch.testing.assert_close(restored.lookup(query)[0], loc)
    l6 = torch.randn(len(query), 6, generator=g, dtype=torch.float64) * 3
    assert torch.isfinite(lat.decode_lattice(l6, query, stats)).all()


def test_vp_targets_and_scores():
    g = torch.Generator().manual_seed(9)
    l0 = torch.randn(6, 6, generator=g, dtype=torch.float64)
    tau = torch.tensor([[1e-4], [0.01], [0.2], [0.5], [0.9], [1.0]], dtype=torch.float64)
    alpha, sigma = lat.vp_alpha_sigma(tau)
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones_like(alpha))
    assert alpha[-1] < 7e-3  # the prior N(0, I) is reached at tau = 1
    l_tau, eps = lat.vp_forward(l0, tau, generator=g)
    assert lat.lattice_target(l0, eps, "eps") is eps and lat.lattice_target(l0, eps, "x0") is l0
    # a perfect network gives the same (true conditional) score in both parameterisations
    s_eps = lat.lattice_score(l_tau, eps, tau, "eps")
    s_x0 = lat.lattice_score(l_tau, l0, tau, "x0")
    torch.testing.assert_close(s_eps, s_x0)
    torch.testing.assert_close(s_eps, -(l_tau - alpha * l0) / sigma**2)
    with pytest.raises(ValueError):
        lat.lattice_target(l0, eps, "v")


# --- sampler steps -------------------------------------------------------------------------


def test_em_step_without_score_or_noise_follows_the_linear_flow():
    """Reverse drift with s = 0 is dv/ds = v, dx/ds = -v: exact solution v e^h, and the exp map."""
    batch_idx, b = _batch()
    g = torch.Generator().manual_seed(10)
    n = len(batch_idx)
    x, v = kp.prior(n, batch_idx, b, generator=g)
    x, v = x.double(), v.double()
    zero = torch.zeros_like(v)
    h = 0.3
    x1, v1 = kp.em_step(x, v, zero, h, batch_idx, b, noise=zero)
    torch.testing.assert_close(v1, v * math.exp(h))
    torch.testing.assert_close(x1, wrap(x - h * v * math.exp(h)))
    # many small steps compose to the same velocity (the linear part is integrated exactly)
    xs, vs = x, v
    for _ in range(10):
        xs, vs = kp.em_step(xs, vs, zero, h / 10, batch_idx, b, noise=zero)
    torch.testing.assert_close(vs, v1)
    # the probability-flow variant agrees when there is no score
    torch.testing.assert_close(kp.em_step(x, v, zero, h, batch_idx, b, flow=True)[1], v1)


def test_steps_are_continuous_as_dt_goes_to_zero():
    batch_idx, b = _batch()
    g = torch.Generator().manual_seed(11)
    n = len(batch_idx)
    x, v = kp.prior(n, batch_idx, b, generator=g)
    s = kp.centre(torch.randn(n, 3, generator=g), batch_idx, b)
    t = torch.full((n, 1), 1.0)
    for h in [1e-4, 1e-6]:
        x1, v1 = kp.em_step(x, v, s, h, batch_idx, b, generator=g)
        assert (v1 - v).abs().max() < 10 * math.sqrt(2 * h)  # noise ~ sqrt(2h)
        assert (wrap(x1 - x)).abs().max() < 10 * h
        x2, v2 = kp.pc_predictor(x, v, s, t, t - h, h)
        assert (v2 - v).abs().max() < 100 * h and wrap(x2 - x).abs().max() < 100 * h
    # every step keeps the velocity mean-free per crystal
    for x1, v1 in [
        kp.em_step(x, v, s, 0.01, batch_idx, b, generator=g),
        kp.langevin_corrector(x, v, s, 0.01, batch_idx, b, generator=g),
        kp.pc_predictor(x, v, s, t, t - 0.01, 0.01),
    ]:
        means = torch.zeros(b, 3).index_add_(0, batch_idx, v1)
        assert torch.allclose(means, torch.zeros(b, 3), atol=1e-5)


def test_em_sampler_with_exact_score_recovers_the_velocity_marginal():
    """With v_T ~ N(0, sigma_v(T)^2) and the exact marginal score -v/sigma_v^2, reverse EM steps
    must land on N(0, sigma_v(t_end)^2): checks the 2(e^h - 1) score coefficient and the noise."""
    n = 50_000
    batch_idx = torch.zeros(n, dtype=torch.long)
    g = torch.Generator().manual_seed(12)
    steps, t_end = 200, 0.2
    ts = torch.linspace(kp.T_MAX, t_end, steps + 1, dtype=torch.float64)
    v = kp.sigma_v(ts[0], 0.0) * torch.randn(n, 1, generator=g, dtype=torch.float64)
    x = torch.zeros_like(v)
    for i in range(steps):
        h = float(ts[i] - ts[i + 1])
        x, v = kp.em_step(x, v, -v / kp.var_v(ts[i]), h, batch_idx, 1, generator=g)
    target = float(kp.var_v(ts[-1]))
    assert abs(v.var().item() - target) < 0.02 * target + 5 * target * math.sqrt(2 / n)


def test_lattice_steps():
    g = torch.Generator().manual_seed(13)
    l = torch.randn(4, 6, generator=g, dtype=torch.float64)
    tau = torch.full((4, 1), 0.5, dtype=torch.float64)
    zero = torch.zeros_like(l)
    # no score, no noise: the reverse VP drift +beta/2 l over |dtau|
    out = lat.lattice_em_step(l, zero, tau, -1e-3, noise=zero)
    torch.testing.assert_close(out, l * (1 + 0.5 * lat.beta(tau) * 1e-3))
    s = torch.randn(4, 6, generator=g, dtype=torch.float64)
    c = lat.lattice_corrector(l, s, noise=zero)
    delta = 0.25 / s.pow(2).mean(-1, keepdim=True)
    torch.testing.assert_close(c, l + delta * s)


def test_kldm_maths_imports_without_crystal_io():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "for n in ('pymatgen', 'ray', 'pyarrow', 'matgl', 'pandas'): sys.modules[n] = None\n"
        "import crysray.methods.kldm_process, crysray.methods.kldm_lattice\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
