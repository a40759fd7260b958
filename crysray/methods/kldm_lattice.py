"""KLDM lattice: 6-number invariant representation and VP diffusion (docs/methods.md K2.3, K3).

l = [l_1..3, theta_1..3]: log-lengths standardised with statistics per atom count n, and angles
through theta = tan(phi - pi/2) / 0.35. Lattices are (B, 3, 3) with rows as vectors in Angstrom;
angles (alpha, beta, gamma) are in radians. The VP time is the outer tau in [0, 1] (K6.1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

ANGLE_SCALE = 0.35  # docs/methods.md K2.3, from the released config
BETA_MIN, BETA_MAX = 0.1, 20.0  # K2.3, linear beta(tau)
TRIM = 0.025  # K2.3: 2.5 % trimmed from each end before the mean/std
MIN_COUNT = 40  # K2.3: below this the code's trim slice is empty (NaN); we pool instead
_STD_FLOOR = 1e-3  # one-structure or identical-length bins would otherwise divide by zero


def lattice_to_params(lattice: torch.Tensor):
    """(B, 3, 3) -> lengths (B, 3), angles (B, 3) = (alpha, beta, gamma) in radians."""
    lengths = lattice.norm(dim=-1)
    a, b, c = lattice.unbind(-2)

    def angle(u, w, nu, nw):
        return torch.arccos(((u * w).sum(-1) / (nu * nw)).clamp(-1.0, 1.0))

    la, lb, lc = lengths.unbind(-1)
    angles = torch.stack([angle(b, c, lb, lc), angle(a, c, la, lc), angle(a, b, la, lb)], -1)
    return lengths, angles


def params_to_lattice(lengths: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Canonical lattice with c along z and a in the xz-plane (pymatgen's from_parameters frame).

    Any frame works for an O(3)-invariant model; this one matches the data pipeline's rebuild.
    """
    al, be, ga = angles.unbind(-1)
    la, lb, lc = lengths.unbind(-1)
    cos_gs = (torch.cos(al) * torch.cos(be) - torch.cos(ga)) / (torch.sin(al) * torch.sin(be))
    gs = torch.arccos(cos_gs.clamp(-1.0, 1.0))  # gamma* of the reciprocal lattice
    zero = torch.zeros_like(la)
    va = torch.stack([la * torch.sin(be), zero, la * torch.cos(be)], -1)
    vb = torch.stack(
        [
            -lb * torch.sin(al) * torch.cos(gs),
            lb * torch.sin(al) * torch.sin(gs),
            lb * torch.cos(al),
        ],
        -1,
    )
    vc = torch.stack([zero, zero, lc], -1)
    return torch.stack([va, vb, vc], -2)


def _trimmed_mean_std(x: torch.Tensor, trim: float):
    """Column-wise mean/std without the floor(trim * n) smallest and largest values."""
    n = x.shape[0]
    k = math.floor(trim * n)
    xs = x.sort(dim=0).values[k : n - k]
    std = xs.std(dim=0, unbiased=False) if xs.shape[0] > 1 else torch.zeros(x.shape[1])
    return xs.mean(dim=0), std.clamp_min(_STD_FLOOR)


@dataclass(frozen=True)
class LatticeStats:
    """Per-atom-count loc/scale of log-lengths (docs/methods.md K2.3, pitfall K6.10).

    Row n of ``loc``/``scale`` (shape (n_max + 1, 3)) holds the statistics for n atoms. Counts
    with fewer than ``min_count`` training structures, and counts never seen (including any
    n > n_max), use the pooled statistics of the whole table: the released code gives NaN for
    thin bins and fails for unseen ones.
    """

    loc: torch.Tensor  # (n_max + 1, 3) float64
    scale: torch.Tensor  # (n_max + 1, 3) float64
    pooled_loc: torch.Tensor  # (3,)
    pooled_scale: torch.Tensor  # (3,)

    @staticmethod
    def from_table(
        num_atoms: torch.Tensor,
        lengths: torch.Tensor,
        trim: float = TRIM,
        min_count: int = MIN_COUNT,
    ) -> LatticeStats:
        """num_atoms (M,) long, lengths (M, 3) Angstrom of the training split."""
        log_len = torch.log(lengths.double())
        pooled_loc, pooled_scale = _trimmed_mean_std(log_len, trim)
        n_max = int(num_atoms.max())
        loc = pooled_loc.repeat(n_max + 1, 1)
        scale = pooled_scale.repeat(n_max + 1, 1)
        for n in torch.unique(num_atoms).tolist():
            rows = log_len[num_atoms == n]
            if rows.shape[0] >= min_count:
                loc[n], scale[n] = _trimmed_mean_std(rows, trim)
        return LatticeStats(loc, scale, pooled_loc, pooled_scale)

    def lookup(self, num_atoms: torch.Tensor):
        """(B,) atom counts -> loc (B, 3), scale (B, 3), float64, on num_atoms' device."""
        n = num_atoms.cpu().long()
        known = n < self.loc.shape[0]
        idx = n.clamp(max=self.loc.shape[0] - 1)
        loc = torch.where(known[:, None], self.loc[idx], self.pooled_loc)
        scale = torch.where(known[:, None], self.scale[idx], self.pooled_scale)
        return loc.to(num_atoms.device), scale.to(num_atoms.device)

    def to_dict(self) -> dict:
        return {
            k: getattr(self, k).tolist() for k in ("loc", "scale", "pooled_loc", "pooled_scale")
        }

    @staticmethod
    def from_dict(d: dict) -> LatticeStats:
        return LatticeStats(
            *(
                torch.tensor(d[k], dtype=torch.float64)
                for k in ("loc", "scale", "pooled_loc", "pooled_scale")
            )
        )


def encode_lattice(lattice: torch.Tensor, num_atoms: torch.Tensor, stats: LatticeStats):
    """(B, 3, 3) -> l (B, 6) (docs/methods.md K2.3)."""
    lengths, angles = lattice_to_params(lattice)
    loc, scale = stats.lookup(num_atoms)
    ell = (torch.log(lengths) - loc.to(lengths.dtype)) / scale.to(lengths.dtype)
    theta = torch.tan(angles - math.pi / 2) / ANGLE_SCALE
    return torch.cat([ell, theta], -1)


def decode_lattice(l6: torch.Tensor, num_atoms: torch.Tensor, stats: LatticeStats):
    """l (B, 6) -> canonical lattice (B, 3, 3); every real l6 maps to angles in (0, pi)."""
    loc, scale = stats.lookup(num_atoms)
    lengths = torch.exp(l6[:, :3] * scale.to(l6.dtype) + loc.to(l6.dtype))
    angles = torch.arctan(ANGLE_SCALE * l6[:, 3:]) + math.pi / 2
    return params_to_lattice(lengths, angles)


# ---------------------------------------------------------------------------------------------
# VP-SDE on l (docs/methods.md K2.3); tau is (B, 1).


def beta(tau: torch.Tensor) -> torch.Tensor:
    return BETA_MIN + (BETA_MAX - BETA_MIN) * tau


def vp_alpha_sigma(tau: torch.Tensor):
    """alpha = exp(-1/2 int beta), sigma = sqrt(1 - alpha^2); expm1 keeps sigma exact near 0."""
    integral = BETA_MIN * tau + 0.5 * (BETA_MAX - BETA_MIN) * tau**2
    return torch.exp(-0.5 * integral), torch.sqrt(-torch.expm1(-integral))


def vp_forward(l0: torch.Tensor, tau: torch.Tensor, generator=None):
    """l_tau = alpha l_0 + sigma eps (docs/methods.md K2.3). Returns (l_tau, eps)."""
    eps = torch.randn(l0.shape, generator=generator, device=l0.device, dtype=l0.dtype)
    alpha, sigma = vp_alpha_sigma(tau)
    return alpha * l0 + sigma * eps, eps


def lattice_target(l0: torch.Tensor, eps: torch.Tensor, parameterization: str) -> torch.Tensor:
    """KLDM-eps regresses the noise, the x0 ("eps_0", released config) one the clean l_0 (K2.3)."""
    if parameterization == "eps":
        return eps
    if parameterization == "x0":
        return l0
    raise ValueError(f"unknown lattice parameterization {parameterization!r}")


def lattice_score(l_tau, out, tau, parameterization: str):
    """Score implied by the network output (docs/methods.md K2.3): eps -> -eps_hat / sigma,
    x0 -> (alpha l0_hat - l_tau) / sigma^2."""
    alpha, sigma = vp_alpha_sigma(tau)
    if parameterization == "eps":
        return -out / sigma
    if parameterization == "x0":
        return (alpha * out - l_tau) / sigma**2
    raise ValueError(f"unknown lattice parameterization {parameterization!r}")


def lattice_em_step(l, score, tau, dtau, generator=None, noise=None):
    """Euler-Maruyama on the reverse VP SDE, dtau < 0 (docs/methods.md K3, EM):
    l' = l + (-1/2 beta l - beta s) dtau + sqrt(beta |dtau|) z."""
    b = beta(tau)
    if noise is None:
        noise = torch.randn(l.shape, generator=generator, device=l.device, dtype=l.dtype)
    dtau = torch.as_tensor(dtau, dtype=l.dtype, device=l.device)
    return l + (-0.5 * b * l - b * score) * dtau + torch.sqrt(b * dtau.abs()) * noise


def lattice_corrector(l, score, generator=None, noise=None, snr: float = 0.25):
    """Langevin corrector with delta = snr / mean(s^2) per crystal over its 6 numbers (K3, PC)."""
    delta = snr / score.pow(2).mean(-1, keepdim=True).clamp_min(1e-12)
    if noise is None:
        noise = torch.randn(l.shape, generator=generator, device=l.device, dtype=l.dtype)
    return l + delta * score + torch.sqrt(2.0 * delta) * noise
