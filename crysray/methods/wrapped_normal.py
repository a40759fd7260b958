"""Wrapped normal on the circle: density, score, KLDM score normaliser (docs/methods.md K1.4-1.5).

Everything is in radians with period 2*pi. The sum over images is truncated at |k| <= 13
(27 terms), as in the released KLDM code; for sigma up to the TDM horizon (sigma_r <= 1 rad)
the dropped images weigh less than exp(-(2*pi*13)^2 / 2) and change nothing in float64.
"""

from __future__ import annotations

import math

import torch

from crysray.methods.torus import TWO_PI, wrap

K_IMAGES = 13  # docs/methods.md K1.4: k in {-13, ..., 13}
# Below this sigma every image but k = 0 weighs < exp(-(pi)^2 / (2 * 0.2^2)) ~ 1e-54 on [-pi, pi),
# so the normaliser is the plain Gaussian one, 1 / sigma^2, to machine precision.
_GAUSSIAN_SIGMA = 0.2


def _images(d: torch.Tensor, k: int) -> torch.Tensor:
    shifts = TWO_PI * torch.arange(-k, k + 1, dtype=d.dtype, device=d.device)
    return d.unsqueeze(-1) + shifts  # (..., 2k+1)


def log_wrapped_normal(d: torch.Tensor, sigma, k: int = K_IMAGES) -> torch.Tensor:
    """log WN(d; 0, sigma) = log sum_k N(d + 2 pi k; 0, sigma^2), elementwise."""
    sigma = torch.as_tensor(sigma, dtype=d.dtype, device=d.device).unsqueeze(-1)
    z = _images(d, k) / sigma
    return torch.logsumexp(-0.5 * z * z, dim=-1) - torch.log(sigma[..., 0]) - 0.5 * math.log(TWO_PI)


def wrapped_normal_score(d: torch.Tensor, sigma, k: int = K_IMAGES) -> torch.Tensor:
    """S_WN(d; sigma) = sum_k w_k (d + 2 pi k) / sigma^2, w = softmax_k(-(d + 2 pi k)^2 / 2sigma^2).

    docs/methods.md K1.4: with d = r - mu this is d/d(mu) log WN(r; mu, sigma), i.e.
    -d/dd log WN(d; 0, sigma). The sign matters (K6.3): for small sigma S ~ +d / sigma^2.
    Computed in float64 (the softmax logits reach 1e7 when sigma ~ 1e-3) and returned in d's dtype.
    """
    dd = wrap(d.double())  # the score is 2*pi-periodic; centring keeps the image window symmetric
    s = torch.as_tensor(sigma, dtype=torch.float64, device=d.device).unsqueeze(-1)
    x = _images(dd, k)
    w = torch.softmax(-0.5 * (x / s) ** 2, dim=-1)
    return ((w * x).sum(-1) / s[..., 0] ** 2).to(d.dtype)


def wn_normaliser(sigma: torch.Tensor, grid: int = 512) -> torch.Tensor:
    """lambda(sigma) = E_{d ~ WN(0, sigma)} [S_WN(d; sigma)^2] (docs/methods.md K1.5), float64.

    Deterministic replacement for the code's Monte-Carlo table (K6.12): the integrand is smooth
    and 2*pi-periodic, so the trapezoid rule on a uniform grid converges geometrically. Where the
    law is too narrow for the grid, images are negligible and lambda = 1 / sigma^2 exactly.
    The grid spacing is <= sigma / 16 there (trapezoid error ~ exp(-2 pi^2 * 256)), and images
    beyond 8 sigma + 2 pi are dropped for speed: their weight is below exp(-32).
    """
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    flat = sigma.reshape(-1)
    out = 1.0 / flat**2
    wide = flat >= _GAUSSIAN_SIGMA
    if wide.any():
        d = -math.pi + TWO_PI * torch.arange(grid, dtype=torch.float64, device=flat.device) / grid
        s = flat[wide].unsqueeze(-1)  # (M, 1)
        k = min(K_IMAGES, math.ceil(8.0 * float(s.max()) / TWO_PI) + 1)
        d, s = d.expand(s.shape[0], -1), s.expand(-1, grid)
        dens = torch.exp(log_wrapped_normal(d, s, k))
        score = wrapped_normal_score(d, s, k)
        out[wide] = (dens * score**2).sum(-1) * (TWO_PI / grid)
    return out.reshape(sigma.shape)
