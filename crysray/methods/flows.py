"""Bayesian flows of CrysBFN: von Mises on angles, Gaussian on the lattice (docs/methods.md C2-3).

Pure tensor maths, no network. All von Mises draws go through ``NoiseBank``: p_F(theta_i | x)
is the rotation by x of a law that does not depend on x (y_j = x + eps_j, eps_j ~ vM(0, alpha_j)),
so exact draws of the x-free random walk S_i = sum_{j<=i} alpha_j e^{i eps_j} are made once per
N and then rotated to any x (docs C8.7). Each walk is an exact sample; the bank only limits how
many distinct walks exist (``noise_bank_size``).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from crysray.methods.schedule import linear_entropy_alphas
from crysray.methods.torus import TWO_PI, bessel_ratio, wrap

LOG_EPS = math.log(1e-7)


def bayesian_update(m: torch.Tensor, c: torch.Tensor, y: torch.Tensor, alpha):
    """One von Mises Bayesian update of (m, c) with observation y of accuracy alpha.

    c' e^{i m'} = c e^{i m} + alpha e^{i y}.
    """
    re = c * torch.cos(m) + alpha * torch.cos(y)
    im = c * torch.sin(m) + alpha * torch.sin(y)
    return torch.atan2(im, re), torch.sqrt(re * re + im * im)


class NoiseBank:
    """Exact random walks S^{(r)}_i, i = 0..N (S_0 = 0), for one schedule alpha_1..alpha_N."""

    def __init__(self, alphas: np.ndarray, size: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        eps = rng.vonmises(0.0, np.broadcast_to(alphas, (size, alphas.size)))  # float64, exact
        walks = np.cumsum(alphas * np.exp(1j * eps), axis=1)
        walks = np.concatenate([np.zeros((size, 1)), walks], axis=1)
        self.angle = torch.from_numpy(np.angle(walks)).float()  # (R, N+1)
        self.length = torch.from_numpy(np.abs(walks)).float()  # (R, N+1)
        self._copies: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def draw(self, centre: torch.Tensor, index: torch.Tensor, generator=None):
        """theta_index ~ p_F(. | centre): centre (..., 3) angles, index broadcastable (int).

        Returns (m, c). Where index == 0 (the prior) c = 0 and m is uniform. Draws happen on
        centre's device (``generator``, if given, must live there); the walks are copied to
        each device once.
        """
        device = centre.device
        angle, length = self.on(device)
        rows = torch.randint(0, angle.shape[0], centre.shape, generator=generator, device=device)
        index = index.expand_as(centre)
        m = wrap(centre + angle[rows, index])
        c = length[rows, index]
        # drawn unconditionally: branching on (index == 0).any() would sync with the device
        uniform = torch.rand(centre.shape, generator=generator, device=device) * TWO_PI - math.pi
        return torch.where(index == 0, uniform.to(m.dtype), m), c

    def on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(angle, length) walk tables on ``device``, copied there once."""
        key = str(device)
        if key not in self._copies:
            self._copies[key] = (self.angle.to(device), self.length.to(device))
        return self._copies[key]


class VonMisesFlow:
    """Schedule, loss weights and flow draws for N steps (cached per N)."""

    def __init__(self, beta1: float, bank_size: int, seed: int = 0):
        self.beta1, self.bank_size, self.seed = beta1, bank_size, seed
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor, NoiseBank]] = {}

    def tables(self, steps: int, device: torch.device | str = "cpu"):
        """(alphas (N,), loss weights N alpha A(alpha) (N,), noise bank) for N = steps.

        alphas and weights are returned on ``device``; the bank copies itself on first draw.
        """
        if steps < 1:
            raise ValueError(f"number of steps N must be >= 1, got {steps}")
        if steps not in self._cache:
            alphas = linear_entropy_alphas(steps, float(self.beta1))
            weights = steps * alphas * bessel_ratio(alphas)
            # keep the bank near 64 MB whatever N is
            size = int(max(1024, min(self.bank_size, 8_000_000 // (steps + 1))))
            bank = NoiseBank(alphas, size, seed=self.seed + steps)
            self._cache[steps] = (
                torch.from_numpy(alphas).float(),
                torch.from_numpy(weights).float(),
                bank,
            )
        alphas, weights, bank = self._cache[steps]
        return alphas.to(device), weights.to(device), bank

    def entropy_condition(self, c: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Normalised log concentration u in [0, ~1]; 0 for the prior (docs C2)."""
        u = (torch.log(c + 1e-7) - LOG_EPS) / (math.log(self.beta1) - LOG_EPS)
        return torch.where(index == 0, torch.zeros_like(u), u)


class GaussianFlow:
    """Gaussian Bayesian flow of the normalised lattice: gamma(t) = 1 - sigma1^(2t)."""

    def __init__(self, sigma1: float):
        self.sigma1 = sigma1

    def gamma(self, t: torch.Tensor) -> torch.Tensor:
        return 1.0 - self.sigma1 ** (2.0 * t)

    def draw(self, x: torch.Tensor, t: torch.Tensor, generator=None) -> torch.Tensor:
        """mu ~ N(gamma x, gamma (1 - gamma)); t (float or tensor) broadcastable to x; drawn on
        x's device."""
        g = self.gamma(torch.as_tensor(t, dtype=x.dtype, device=x.device))
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return g * x + torch.sqrt(g * (1.0 - g)) * noise

    def loss_weight(self, index: torch.Tensor, steps: int) -> torch.Tensor:
        """Discrete-time weight N (1 - sigma1^(2/N)) / (2 sigma1^(2i/N)) (docs C3)."""
        return (
            steps
            * (1.0 - self.sigma1 ** (2.0 / steps))
            / (2.0 * self.sigma1 ** (2.0 * index / steps))
        )


class DiscreteFlow:
    """Discrete Bayesian flow on K atom types (docs/methods.md C3, "Atom types").

    The sender sees class e_x through y ~ N(alpha (K e_x - 1), alpha K I); the Bayesian update
    of the categorical belief theta is theta' = softmax(log theta + y). Accuracies add, so from
    the uniform prior the belief after accuracy beta is softmax(y) with y ~ N(beta (K e - 1),
    beta K I): the flow distribution, with beta(t) = beta1 t^2. End-back sampling draws it
    around the network's probabilities p instead of a one-hot (docs C2 "Sampling", 2.).
    """

    def __init__(self, beta1: float, num_classes: int):
        if num_classes < 1:
            raise ValueError("the discrete flow needs at least one class")
        self.beta1, self.k = beta1, num_classes

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        return self.beta1 * t**2

    def sender_noise(self, target: torch.Tensor, accuracy: torch.Tensor, generator=None):
        """y ~ N(accuracy (K target - 1), accuracy K I); target (N, K) one-hot or probabilities,
        accuracy a float or a tensor broadcastable to (N, 1)."""
        accuracy = torch.as_tensor(accuracy, dtype=target.dtype, device=target.device)
        eps = torch.randn(
            target.shape, generator=generator, device=target.device, dtype=target.dtype
        )
        return accuracy * (self.k * target - 1) + torch.sqrt(accuracy * self.k) * eps

    def draw(self, target: torch.Tensor, t: torch.Tensor, generator=None) -> torch.Tensor:
        """theta ~ p_F(. | target, t): the belief after accuracy beta(t) from the uniform prior."""
        return torch.softmax(self.sender_noise(target, self.beta(t), generator), dim=-1)

    @staticmethod
    def bayesian_update(theta: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.softmax(torch.log(theta) + y, dim=-1)

    def step_accuracy(self, i, steps: int):
        """alpha_i = beta(i/N) - beta((i-1)/N) = beta1 (2i - 1) / N^2."""
        return self.beta1 * (2 * i - 1) / steps**2

    def loss(self, target: torch.Tensor, probs: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Continuous-time loss K beta1 t |e_x - p|^2 per atom (docs C3; the one the reference
        trains with), t (N,) or (N, 1)."""
        return self.k * self.beta1 * t.reshape(-1) * ((target - probs) ** 2).sum(-1)
