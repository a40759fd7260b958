"""The linear-entropy accuracy schedule of the von Mises flow (docs/methods.md C2).

For N steps and final concentration beta1:
  1. target entropies H*_i fall linearly from H(0) to H(beta1), i = 1..N;
  2. target concentrations beta_i solve H(beta_i) = H*_i;
  3. sender accuracies alpha_i solve E_{eps~vM(0,alpha)} |beta_{i-1} + alpha e^{i eps}| = beta_i,
     with alpha_1 = beta_1.

The reference solves step 3 against a 1e5-sample Monte-Carlo estimate, which makes the root
finder's objective noisy. The expectation is a smooth periodic integral, so here it is computed
by the trapezoidal rule on a uniform grid (exponentially convergent), which makes the schedule
deterministic. Solved schedules are cached on disk as .npy files.
"""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path

import numpy as np
from scipy import optimize, special

from crysray.methods.torus import von_mises_entropy
from crysray.paths import default_cache_dir

_GRID = np.linspace(-math.pi, math.pi, 16384, endpoint=False)
_COS = np.cos(_GRID)


def expected_resultant(prev: float, alpha: float) -> float:
    """E |prev + alpha e^{i eps}| for eps ~ vM(0, alpha), by periodic quadrature."""
    # density exp(alpha (cos eps - 1)) / (2 pi i0e(alpha)) is overflow-free for any alpha
    density = np.exp(alpha * (_COS - 1.0)) / (2.0 * math.pi * special.i0e(alpha))
    length = np.sqrt(np.maximum(prev * prev + alpha * alpha + 2.0 * prev * alpha * _COS, 0.0))
    return float(np.sum(length * density) * (2.0 * math.pi / _GRID.size))


def target_concentrations(steps: int, beta1: float) -> np.ndarray:
    """beta_i for i = 1..steps, with H(beta_i) linear in i and beta_N = beta1."""
    h0, h1 = float(von_mises_entropy(0.0)), float(von_mises_entropy(beta1))
    betas = np.empty(steps)
    for i in range(1, steps + 1):
        target = h0 + (h1 - h0) * i / steps
        if i == steps:
            betas[i - 1] = beta1
            continue
        betas[i - 1] = optimize.brentq(
            lambda k, target=target: float(von_mises_entropy(k)) - target,
            0.0,
            beta1,
            xtol=1e-12,
            rtol=1e-12,
        )
    return betas


def solve_alphas(steps: int, beta1: float) -> np.ndarray:
    """Sender accuracies alpha_1..alpha_N (float64, shape (N,))."""
    betas = target_concentrations(steps, beta1)
    alphas = np.empty(steps)
    alphas[0] = betas[0]
    for i in range(1, steps):
        prev, target = betas[i - 1], betas[i]
        lo, hi = max(target - prev, 1e-12), max(beta1, target)
        while expected_resultant(prev, hi) < target:
            hi *= 2.0
        alphas[i] = optimize.brentq(
            lambda a, prev=prev, target=target: expected_resultant(prev, a) - target,
            lo,
            hi,
            xtol=1e-12,
            rtol=1e-10,
        )
    return alphas


@functools.lru_cache(maxsize=32)
def linear_entropy_alphas(steps: int, beta1: float, cache_dir: str | None = None) -> np.ndarray:
    """Cached ``solve_alphas``: memory first, then ``<cache>/schedules/*.npy``, then solve."""
    if steps < 1:
        raise ValueError(f"number of steps must be >= 1, got {steps}")
    path = Path(cache_dir or default_cache_dir()) / "schedules"
    path = path / f"vm_linear_entropy_n{steps}_beta{beta1:g}.npy"
    if path.exists():
        alphas = np.load(path)
        if alphas.shape == (steps,) and np.all(np.isfinite(alphas)):
            return alphas
    alphas = solve_alphas(steps, beta1)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
    np.save(tmp, alphas)
    os.replace(tmp, path)  # atomic: concurrent workers never read a half-written file
    return alphas
