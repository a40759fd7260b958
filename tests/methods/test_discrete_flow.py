"""The discrete Bayesian flow of CrysBFN on atom types against its closed forms."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from crysray.methods.flows import DiscreteFlow

K = 5


def one_hot(index, k=K, n=1):
    return torch.nn.functional.one_hot(torch.full((n,), index), k).double()


def test_bayesian_update_is_bayes_rule_with_the_gaussian_likelihood():
    """theta' ∝ theta * p(y | class), with p(y | k) = N(y; alpha (K e_k - 1), alpha K I)."""
    g = torch.Generator().manual_seed(0)
    theta = torch.softmax(torch.randn(3, K, generator=g, dtype=torch.float64), -1)
    y = torch.randn(3, K, generator=g, dtype=torch.float64)
    alpha = 0.7
    log_lik = torch.stack(
        [
            torch.distributions.Normal(alpha * (K * one_hot(k, n=3) - 1), math.sqrt(alpha * K))
            .log_prob(y)
            .sum(-1)
            for k in range(K)
        ],
        dim=-1,
    )
    posterior = theta * torch.exp(log_lik - log_lik.max(-1, keepdim=True).values)
    posterior = posterior / posterior.sum(-1, keepdim=True)
    assert torch.allclose(DiscreteFlow.bayesian_update(theta, y), posterior, atol=1e-12)


def test_one_shot_flow_equals_sequential_updates():
    """Updating from the uniform prior with alpha_1..alpha_i gives the flow at t = i/N."""
    flow, steps, i, n = DiscreteFlow(0.5, K), 10, 7, 20000
    target = one_hot(2, n=n)
    g = torch.Generator().manual_seed(1)
    theta = torch.full((n, K), 1.0 / K, dtype=torch.float64)
    for j in range(1, i + 1):
        theta = flow.bayesian_update(
            theta, flow.sender_noise(target, flow.step_accuracy(j, steps), g)
        )
    one_shot = flow.draw(target, torch.tensor(i / steps, dtype=torch.float64), g)
    assert math.isclose(sum(flow.step_accuracy(j, steps) for j in range(1, i + 1)),
                        float(flow.beta(torch.tensor(i / steps, dtype=torch.float64))),
                        rel_tol=1e-12)  # fmt: skip
    for c in (2, 0):  # the true class and another one
        assert stats.ks_2samp(theta[:, c].numpy(), one_shot[:, c].numpy()).pvalue > 1e-3


def test_flow_moves_from_uniform_towards_the_class():
    flow = DiscreteFlow(0.5, K)
    target = one_hot(3, n=4000)
    g = torch.Generator().manual_seed(2)
    start = flow.draw(target, torch.tensor(0.0, dtype=torch.float64), g)
    assert torch.allclose(start, torch.full_like(start, 1 / K))
    means = [float(flow.draw(target, torch.tensor(t, dtype=torch.float64), g)[:, 3].mean())
             for t in (0.3, 0.6, 1.0)]  # fmt: skip
    assert 1 / K < means[0] < means[1] < means[2]


@pytest.mark.parametrize("t", [0.0, 0.25, 1.0])
def test_type_loss_weight_is_k_beta1_t(t):
    flow = DiscreteFlow(0.5, K)
    target, probs = one_hot(1), torch.full((1, K), 1.0 / K, dtype=torch.float64)
    expected = K * 0.5 * t * ((1 - 1 / K) ** 2 + (K - 1) / K**2)
    assert math.isclose(float(flow.loss(target, probs, torch.tensor([t]))), expected, abs_tol=1e-12)
