"""crysray.methods.flows: von Mises and Gaussian Bayesian flows (docs/methods.md C2, C3, C8.7)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from crysray.methods.flows import GaussianFlow, NoiseBank, VonMisesFlow, bayesian_update
from crysray.methods.torus import bessel_ratio, wrap

BETA1 = 1e3
SIGMA1 = 0.03162277660168379
N = 20


@pytest.fixture(scope="module")
def flow20():
    flow = VonMisesFlow(BETA1, bank_size=32768, seed=0)
    return flow.tables(N)


def test_bayesian_update_is_complex_sum():
    g = torch.Generator().manual_seed(0)
    n = 10_000
    m = torch.rand(n, generator=g, dtype=torch.float64) * 2 * math.pi - math.pi
    c = torch.empty(n, dtype=torch.float64).exponential_(0.1, generator=g)
    y = torch.rand(n, generator=g, dtype=torch.float64) * 20 - 10  # any real angle
    alpha = torch.empty(n, dtype=torch.float64).exponential_(0.05, generator=g)
    m2, c2 = bayesian_update(m, c, y, alpha)
    z = c * torch.exp(1j * m) + alpha * torch.exp(1j * y)
    assert torch.allclose(c2, z.abs(), rtol=1e-12, atol=1e-12)
    assert bool((m2 >= -math.pi).all()) and bool((m2 <= math.pi).all())
    keep = z.abs() > 1e-9  # the direction of a zero vector is arbitrary
    assert float(wrap(m2 - z.angle())[keep].abs().max()) < 1e-10
    # scalar alpha, and the prior c = 0: the first update returns (y, alpha) exactly on the circle
    m3, c3 = bayesian_update(m, torch.zeros_like(c), y, 0.75)
    assert torch.allclose(c3, torch.full_like(c3, 0.75), rtol=1e-14, atol=0)
    assert float(wrap(m3 - y).abs().max()) < 1e-12


def test_bayesian_update_can_lower_concentration():
    # opposite observation: c' = |c - alpha| < c (docs C2: accuracy is not additive)
    m, c = torch.tensor([0.3]), torch.tensor([5.0])
    _, c2 = bayesian_update(m, c, m + math.pi, 2.0)
    assert float(c2) == pytest.approx(3.0, abs=1e-5)


def _sequential(x0: float, alphas: torch.Tensor, steps: int, n: int, seed: int):
    """(m, c) after ``steps`` sequential updates with y_j ~ vM(x0, alpha_j), float64."""
    m = torch.zeros(n, dtype=torch.float64)
    c = torch.zeros(n, dtype=torch.float64)
    loc = torch.full((n,), x0, dtype=torch.float64)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for j in range(steps):
            a = float(alphas[j])
            y = torch.distributions.VonMises(loc, torch.full((n,), a, dtype=torch.float64)).sample()
            m, c = bayesian_update(m, c, y, a)
    return m, c


@pytest.mark.parametrize("x0", [0.3, -2.9])
@pytest.mark.parametrize("index", [1, 5, N - 1])
def test_flow_draw_matches_sequential_updates(flow20, x0, index):
    alphas, _, bank = flow20
    n = 3000
    g = torch.Generator().manual_seed(100 + index)
    centre = torch.full((n, 1), x0, dtype=torch.float64)
    m, c = bank.draw(centre, torch.tensor([index]), g)
    m, c = m.squeeze(1).double(), c.squeeze(1).double()
    m_seq, c_seq = _sequential(x0, alphas, index, n, seed=index)
    offset, offset_seq = wrap(m - x0), wrap(m_seq - x0)
    assert stats.ks_2samp(offset.numpy(), offset_seq.numpy()).pvalue > 1e-3
    if index == 1:  # one update: c = alpha_1 exactly, a point mass that KS cannot compare
        assert torch.allclose(c, torch.full_like(c, float(alphas[0])), rtol=1e-6, atol=0)
        assert torch.allclose(c_seq, torch.full_like(c_seq, float(alphas[0])), rtol=1e-6, atol=0)
    else:
        assert stats.ks_2samp(c.numpy(), c_seq.numpy()).pvalue > 1e-3
    # power check: one update off (index + 1) is told apart by the same test
    _m_next, c_next = bank.draw(centre, torch.tensor([index + 1]), g)
    assert stats.ks_2samp(c_next.squeeze(1).numpy(), c_seq.numpy()).pvalue < 1e-3


def test_flow_draw_index_zero_is_the_prior(flow20):
    _, _, bank = flow20
    g = torch.Generator().manual_seed(7)
    centre = torch.full((4000, 3), 1.1)
    m, c = bank.draw(centre, torch.zeros(1, dtype=torch.long), g)
    assert torch.equal(c, torch.zeros_like(c))
    assert bool((m >= -math.pi).all()) and bool((m < math.pi).all())
    ks = stats.kstest(m.flatten().double().numpy(), "uniform", args=(-math.pi, 2 * math.pi))
    assert ks.pvalue > 1e-3
    # the centre is invisible at the prior: circular mean resultant ~ 1/sqrt(n)
    assert float(torch.exp(1j * m.double()).mean().abs()) < 4 / math.sqrt(m.numel())


def test_flow_draw_mixed_indices_per_row(flow20):
    """index broadcasts per atom: rows at index 0 are prior, others follow the bank."""
    _, _, bank = flow20
    g = torch.Generator().manual_seed(8)
    centre = torch.zeros((6, 3))
    index = torch.tensor([[0], [1], [2], [0], [N], [3]])
    _m, c = bank.draw(centre, index, g)
    assert torch.equal(c[index.squeeze(1) == 0], torch.zeros(2, 3))
    assert bool((c[index.squeeze(1) > 0] > 0).all())
    assert torch.allclose(c[1], bank.length[0, 1].expand(3))  # c_1 = alpha_1 for every walk


@pytest.mark.parametrize("x0", [2.0, -3.0])
@pytest.mark.parametrize("index", [2, 5, N - 1])
def test_flow_draw_circular_mean_is_centre(flow20, x0, index):
    _, _, bank = flow20
    n = 20_000
    g = torch.Generator().manual_seed(int(1000 * abs(x0)) + index)
    m, _ = bank.draw(torch.full((n,), x0, dtype=torch.float64), torch.tensor(index), g)
    d = m.double() - x0
    resultant = torch.exp(1j * d).mean()
    mean_dir = float(resultant.angle())
    # standard error of the mean direction; the finite bank adds its own sampling noise
    spread = float(torch.sin(d - mean_dir).pow(2).mean().sqrt())
    se = spread / float(resultant.abs()) * math.sqrt(1 / n + 1 / bank.angle.shape[0])
    assert abs(mean_dir) < 5 * se
    assert float(resultant.abs()) > 0.3  # concentrated, so the direction is meaningful


def test_noise_bank_is_seeded():
    alphas = np.array([0.5, 1.0, 2.0])
    a, b, c = (
        NoiseBank(alphas, 64, seed=1),
        NoiseBank(alphas, 64, seed=1),
        NoiseBank(alphas, 64, seed=2),
    )
    assert torch.equal(a.angle, b.angle) and torch.equal(a.length, b.length)
    assert not torch.equal(a.angle, c.angle)
    assert a.angle.shape == (64, 4) and torch.equal(a.length[:, 0], torch.zeros(64))
    # each walk is S_i = sum_j alpha_j e^{i eps_j}: its steps have length alpha_j
    walk = a.length * torch.exp(1j * a.angle.double())
    steps = (walk[:, 1:] - walk[:, :-1]).abs()
    assert torch.allclose(steps, torch.tensor(alphas).expand(64, 3), rtol=1e-5, atol=1e-5)


def test_gaussian_flow_draw_moments():
    flow = GaussianFlow(SIGMA1)
    g = torch.Generator().manual_seed(0)
    x = torch.tensor([-2.0, -0.5, 0.0, 0.7, 3.0], dtype=torch.float64)
    n = 200_000
    for t in (0.1, 0.5, 0.9):
        gamma = 1.0 - SIGMA1 ** (2 * t)
        mu = flow.draw(x.expand(n, 5), torch.tensor(t, dtype=torch.float64), g)
        var = gamma * (1 - gamma)
        mean_se = math.sqrt(var / n)
        var_se = var * math.sqrt(2 / (n - 1))
        assert torch.allclose(mu.mean(0), gamma * x, rtol=0, atol=5 * mean_se)
        assert torch.allclose(
            mu.var(0), torch.full((5,), var, dtype=torch.float64), rtol=0, atol=5 * var_se
        )


def test_gaussian_flow_endpoints():
    flow = GaussianFlow(SIGMA1)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 3, generator=g)
    assert torch.equal(flow.draw(x, torch.tensor(0.0), g), torch.zeros_like(x))  # mu = 0 at i = 1
    gamma_1 = flow.gamma(torch.tensor(1.0, dtype=torch.float64))
    assert float(gamma_1) == pytest.approx(1 - SIGMA1**2, rel=1e-12)
    t = torch.linspace(0, 1, 11)
    assert bool((flow.gamma(t).diff() > 0).all())


def test_coordinate_loss_weights_n1000():
    alphas, weights, bank = VonMisesFlow(BETA1, bank_size=1024).tables(1000)
    assert alphas.shape == weights.shape == (1000,)
    assert bank.angle.shape == (1024, 1001)
    # N alpha A(alpha), docs C2
    expected = 1000 * alphas.double() * bessel_ratio(alphas.double())
    assert torch.allclose(weights.double(), expected, rtol=1e-6)
    for i, value, rel in [(1, 7.75, 0.01), (500, 156, 0.02), (900, 3551, 0.02), (1000, 7706, 0.02)]:
        assert float(weights[i - 1]) == pytest.approx(value, rel=rel)
    assert float(weights.mean()) == pytest.approx(996, rel=0.02)


def test_lattice_loss_weights_n1000():
    flow = GaussianFlow(SIGMA1)
    index = torch.tensor([1.0, 500.0, 1000.0], dtype=torch.float64)
    w = flow.loss_weight(index, 1000)
    np.testing.assert_allclose(w.numpy(), [3.47, 108.8, 3442], rtol=5e-3)
    # closed form N (1 - s^(2/N)) / (2 s^(2i/N))
    i = torch.arange(1, 1001, dtype=torch.float64)
    closed = 1000 * (1 - SIGMA1 ** (2 / 1000)) / (2 * SIGMA1 ** (2 * i / 1000))
    assert torch.allclose(flow.loss_weight(i, 1000), closed, rtol=1e-12)


def test_tables_rejects_bad_steps():
    flow = VonMisesFlow(BETA1, bank_size=1024)
    for steps in (0, -5):
        with pytest.raises(ValueError, match="number of steps N must be >= 1"):
            flow.tables(steps)


def test_entropy_condition():
    flow = VonMisesFlow(BETA1, bank_size=1024)
    c = torch.tensor([0.0, 1e-7, 1.0, 1e3, 5.0])
    index = torch.tensor([0, 3, 3, 3, 0])
    u = flow.entropy_condition(c, index)
    expected = (torch.log(c + 1e-7) + 16.1181) / 23.0259  # docs C2 for beta1 = 1e3
    assert float(u[0]) == 0.0 and float(u[4]) == 0.0  # prior
    assert torch.allclose(u[1:4], expected[1:4], atol=1e-4)
    assert float(u[3]) == pytest.approx(1.0, abs=1e-6)
