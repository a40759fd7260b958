"""Angles on the torus and von Mises helpers (docs/methods.md C2, C8.1-8.3).

Fractional coordinates f in [0, 1) map to angles theta = 2*pi*f - pi in [-pi, pi).
Bessel functions are always used in their exponentially scaled form: raw I0 overflows in
float64 near kappa = 700.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import special

TWO_PI = 2.0 * math.pi


def wrap(x: torch.Tensor) -> torch.Tensor:
    """Wrap angles into [-pi, pi)."""
    y = x - TWO_PI * torch.round(x / TWO_PI)  # exact identity on [-pi, pi)
    # rounding can leave y a hair outside the interval; fold it back
    return torch.where(y >= math.pi, y - TWO_PI, y).clamp_min(-math.pi)


def frac_to_angle(frac: torch.Tensor) -> torch.Tensor:
    return TWO_PI * torch.remainder(frac, 1.0) - math.pi


def angle_to_frac(theta: torch.Tensor) -> torch.Tensor:
    frac = torch.remainder((wrap(theta) + math.pi) / TWO_PI, 1.0)
    # remainder can round a tiny negative value up to exactly 1.0
    return torch.where(frac >= 1.0, torch.zeros_like(frac), frac)


def bessel_ratio(kappa):
    """A(kappa) = I1(kappa) / I0(kappa), finite for every kappa >= 0 (numpy or torch)."""
    if isinstance(kappa, torch.Tensor):
        k = kappa.double()
        return (torch.special.i1e(k) / torch.special.i0e(k)).to(kappa.dtype)
    return special.i1e(kappa) / special.i0e(kappa)


def log_i0(kappa: np.ndarray | float) -> np.ndarray:
    """ln I0(kappa) without overflow."""
    return np.log(special.i0e(kappa)) + np.abs(kappa)


def von_mises_entropy(kappa: np.ndarray | float) -> np.ndarray:
    """Differential entropy of vM(mu, kappa): ln(2 pi) + ln I0(kappa) - kappa A(kappa)."""
    kappa = np.asarray(kappa, dtype=np.float64)
    return math.log(TWO_PI) + log_i0(kappa) - kappa * bessel_ratio(kappa)
