"""KLDM coordinates: kinetic Langevin diffusion on the torus, closed form (docs/methods.md K1, K3).

Pure tensor maths, no network. Angles x are in radians on [-pi, pi) (crysray.methods.torus
convention, x = 2*pi*f - pi; the spec's offset-free atan2 convention differs by a constant
rotation, which no displacement, score or step below can see). Friction gamma = 1, horizon
T = 2, v_0 = 0 (K1.1). Times called ``t`` are on the TDM clock t = 2 * tau (K6.1).

Shapes: N atoms, B crystals; per-atom tensors are (N, 3); ``t`` is given per atom as (N, 1) or
broadcastable to it (use ``t_per_atom``). ``batch_idx`` (N,) maps atoms to crystals.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch

from crysray.methods.torus import wrap
from crysray.methods.wrapped_normal import wn_normaliser, wrapped_normal_score
from crysray.types import segment_mean

T_MAX = 2.0  # docs/methods.md K1.1, TDM tf = 2
SQRT_EPS = 1e-6  # K1.2: both code bases add 1e-6 inside the sqrt of sigma_r^2 and sigma_v^2
# Below this t the float64 closed forms lose digits to cancellation; the series are used instead
# (truncation error < t^11 / 1e4, far below float64 resolution of the values there).
_SERIES_T = 0.1


def tdm_time(tau: torch.Tensor) -> torch.Tensor:
    """Outer time tau in [0, 1] -> TDM time t = 2 tau (docs/methods.md K1.1, pitfall K6.1)."""
    return T_MAX * tau


def t_per_atom(t: torch.Tensor, batch_idx: torch.Tensor) -> torch.Tensor:
    """(B,) per-crystal times -> (N, 1) per-atom times."""
    return t[batch_idx].unsqueeze(-1)


def centre(x: torch.Tensor, batch_idx: torch.Tensor, num_crystals: int) -> torch.Tensor:
    """Remove the per-crystal mean over atoms (docs/methods.md K1.3, pitfall K6.4)."""
    return x - segment_mean(x, batch_idx, num_crystals)[batch_idx]


# ---------------------------------------------------------------------------------------------
# K1.2 the kernel. All variances are computed in float64 and returned in t's dtype.


def _series(t: torch.Tensor, coeffs: list[float], first_power: int) -> torch.Tensor:
    out = torch.zeros_like(t)
    for c in reversed(coeffs):  # Horner in t, coefficients of t^first_power, t^(first_power+1)...
        out = out * t + c
    return out * t**first_power


def var_v(t: torch.Tensor) -> torch.Tensor:
    """sigma_v^2 = 1 - e^{-2t}: expm1 keeps it exact as t -> 0 (where it is ~2t)."""
    return (-torch.expm1(-2.0 * t.double())).to(t.dtype)


def drift_coef(t: torch.Tensor) -> torch.Tensor:
    """a(t) = tanh(t/2) = dmu_r / dv_t, the regression slope of r on v_t (docs/methods.md K1.2)."""
    return torch.tanh(0.5 * t)


def var_r_conditional(t: torch.Tensor) -> torch.Tensor:
    """sigma_r^2 = Var(r_t | v_0, v_t) = 2t - 4 tanh(t/2) (docs/methods.md K1.2, pitfall K6.2).

    The closed form is a difference of O(t) terms for an O(t^3) result: in float32 it is exactly 0
    for t < 0.01, so small t uses the tanh series t^3/6 - t^5/60 + 17 t^7/10080 - 31 t^9/362880.
    """
    x = t.double()
    closed = 2.0 * x - 4.0 * torch.tanh(0.5 * x)
    # odd series in t: coefficients of t^3, t^4 (0), t^5, ...
    series = _series(x, [1 / 6, 0.0, -1 / 60, 0.0, 17 / 10080, 0.0, -31 / 362880], 3)
    return torch.where(x < _SERIES_T, series, closed).to(t.dtype)


def var_r_marginal(t: torch.Tensor) -> torch.Tensor:
    """Var(r_t | v_0) = 2t - 3 + 4e^{-t} - e^{-2t} (docs/methods.md K1.2), ~2t^3/3 for small t.

    Series coefficients are (4(-1)^n - (-2)^n) / n! for n >= 3 (n <= 2 cancel exactly).
    """
    x = t.double()
    closed = 2.0 * x - 3.0 + 4.0 * torch.exp(-x) - torch.exp(-2.0 * x)
    coeffs = [(4.0 * (-1) ** n - (-2.0) ** n) / math.factorial(n) for n in range(3, 14)]
    return torch.where(x < _SERIES_T, _series(x, coeffs, 3), closed).to(t.dtype)


def cov_rv(t: torch.Tensor) -> torch.Tensor:
    """Cov(r_t, v_t | v_0) = (1 - e^{-t})^2 (docs/methods.md K1.2)."""
    return (torch.expm1(-t.double()) ** 2).to(t.dtype)


def sigma_v(t: torch.Tensor, eps: float = SQRT_EPS) -> torch.Tensor:
    return torch.sqrt(var_v(t) + eps)


def sigma_r(t: torch.Tensor, eps: float = SQRT_EPS) -> torch.Tensor:
    """The floor eps (default as released) keeps sigma_r >= 1e-3 rad; pass 0 for the exact law."""
    return torch.sqrt(var_r_conditional(t) + eps)


# ---------------------------------------------------------------------------------------------
# K1.3-1.5 training draws and targets


class ForwardDraw(NamedTuple):
    x_t: torch.Tensor  # (N, 3) wrap(x_0 + r), radians
    v_t: torch.Tensor  # (N, 3) velocity, radians per unit t
    r: torch.Tensor  # (N, 3) displacement mu_r + sigma_r eps_r, unwrapped (centroid exactly 0)
    mu_r: torch.Tensor  # (N, 3) a(t) v_t
    eps_v: torch.Tensor  # (N, 3) mean-free per crystal
    eps_r: torch.Tensor  # (N, 3) mean-free per crystal


def sample_forward(
    x0: torch.Tensor,
    t: torch.Tensor,
    batch_idx: torch.Tensor,
    num_crystals: int,
    generator: torch.Generator | None = None,
    eps: float = SQRT_EPS,
) -> ForwardDraw:
    """Draw (x_t, v_t) | x_0, v_0 = 0 (docs/methods.md K1.3). ``t``: (N, 1) per-atom TDM times.

    v_t is drawn from its marginal and r from its law given v_t, which together give the joint
    with the right r-v covariance. Both noises are centred per crystal: the network is
    translation invariant, so the centroid motion is a null direction it cannot predict.
    """
    noise = torch.randn((2, *x0.shape), generator=generator, device=x0.device, dtype=x0.dtype)
    eps_v = centre(noise[0], batch_idx, num_crystals)
    eps_r = centre(noise[1], batch_idx, num_crystals)
    v_t = sigma_v(t, eps) * eps_v
    mu_r = drift_coef(t) * v_t
    r = mu_r + sigma_r(t, eps) * eps_r
    return ForwardDraw(wrap(x0 + r), v_t, r, mu_r, eps_v, eps_r)


def wn_term(draw: ForwardDraw, t, batch_idx, num_crystals, eps: float = SQRT_EPS):
    """centre(S_WN(r - mu_r; sigma_r)) (docs/methods.md K1.4-1.5); the score itself is periodic."""
    s = wrapped_normal_score(draw.r - draw.mu_r, sigma_r(t, eps).expand_as(draw.r))
    return centre(s, batch_idx, num_crystals)


def full_score_target(draw: ForwardDraw, t, batch_idx, num_crystals, eps: float = SQRT_EPS):
    """grad_{v_t} log p(x_t, v_t | x_0) = -eps_v/sigma_v + a(t) centre(S_WN) (docs/methods.md K1.4).

    Written as -v_t / sigma_v^2 so that, floor included, it equals ``velocity_score`` of the
    simplified target exactly: the two parameterisations then share one score.
    """
    wn = wn_term(draw, t, batch_idx, num_crystals, eps)
    return -draw.v_t / (var_v(t) + eps) + drift_coef(t) * wn


class LambdaTable:
    """lambda(t) = E[S_WN^2] at sigma_r(t), tabulated once on t in [0, T] (docs/methods.md K1.5).

    Quadrature, not Monte Carlo, so the table is deterministic and needs no checkpoint buffer.
    Queries interpolate log lambda linearly in t: smoother than the code's nearest index and
    free of its t = 0 wrap-around (K6.12). With eps = 0 lambda(0) is infinite; keep eps > 0.
    """

    def __init__(self, size: int = 2001, eps: float = SQRT_EPS):
        self.t_grid = torch.linspace(0.0, T_MAX, size, dtype=torch.float64)
        self.log_lam = torch.log(wn_normaliser(sigma_r(self.t_grid, eps)))
        self._on_device: dict[torch.device, torch.Tensor] = {}

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        """lambda at TDM times ``t``, computed on t's device (the table follows it there once)."""
        log_table = self._on_device.get(t.device)
        if log_table is None:
            log_table = self._on_device.setdefault(t.device, self.log_lam.to(t.device))
        pos = t.double().clamp(0.0, T_MAX) / T_MAX * (len(self.t_grid) - 1)
        lo = pos.floor().long().clamp(max=len(self.t_grid) - 2)
        w = pos - lo
        log_lam = (1 - w) * log_table[lo] + w * log_table[lo + 1]
        return torch.exp(log_lam).to(t.dtype)


@functools.cache
def lambda_table() -> LambdaTable:
    """The default table, built once per process: every KLDM model (and each Ray actor's
    replicas) reads the same read-only values."""
    return LambdaTable()


def simplified_target(draw, t, batch_idx, num_crystals, lam: LambdaTable, eps=SQRT_EPS):
    """y = centre(S_WN) / sqrt(lambda(t)), the regression target of the network (docs K1.5)."""
    return wn_term(draw, t, batch_idx, num_crystals, eps) / torch.sqrt(lam(t))


def velocity_score(v_t, s_hat, t, lam: LambdaTable, eps: float = SQRT_EPS):
    """s_v = -v_t / sigma_v^2 + a(t) sqrt(lambda(t)) s_hat (docs/methods.md K1.5, pitfall K6.5).

    ``s_hat`` is the (centred) network output at the same TDM time t that lambda is read at.
    """
    return -v_t / (var_v(t) + eps) + drift_coef(t) * torch.sqrt(lam(t)) * s_hat


# ---------------------------------------------------------------------------------------------
# K3 sampler steps. ``t`` is the current TDM time (N, 1); h = 2 |d tau| > 0 is the TDM step.


def _mean_free_noise(like, batch_idx, num_crystals, generator, noise):
    if noise is None:
        noise = torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)
    return centre(noise, batch_idx, num_crystals)


def prior(num_atoms_total, batch_idx, num_crystals, generator=None, device=None):
    """x ~ U[-pi, pi)^{N x 3}, v ~ N(0, I) centred per crystal (docs/methods.md K1.6, K3)."""
    u = torch.rand((num_atoms_total, 3), generator=generator, device=device)
    v = torch.randn((num_atoms_total, 3), generator=generator, device=device)
    return wrap(2 * math.pi * u - math.pi), centre(v, batch_idx, num_crystals)


def em_step(x, v, score_v, h, batch_idx, num_crystals, generator=None, noise=None, flow=False):
    """Exponential-integrator step of the reverse SDE, then the exponential map (docs K3, EM).

    The reverse of dv = -v dt + sqrt(2) dW is dv = (v + 2 s) ds + sqrt(2) dW in s = T - t; its
    linear part is integrated exactly with the score frozen over the step:
    v' = e^h v + 2 (e^h - 1) s + sqrt(e^{2h} - 1) z, then x' = wrap(x - h v'). ``flow`` gives the
    probability-flow variant (half the score, no noise). ``noise`` overrides z (tests).
    Returns (x', v').
    """
    h = torch.as_tensor(h, dtype=v.dtype, device=v.device)
    grow = torch.expm1(h)  # e^h - 1 without cancellation as h -> 0
    if flow:
        v_new = v + grow * (v + score_v)
    else:
        z = _mean_free_noise(v, batch_idx, num_crystals, generator, noise)
        v_new = v + grow * (v + 2.0 * score_v) + torch.sqrt(torch.expm1(2.0 * h)) * z
    return wrap(x - h * v_new), v_new


def langevin_corrector(
    x,
    v,
    score_v,
    h,
    batch_idx,
    num_crystals,
    generator=None,
    noise=None,
    snr: float = 0.25,
    move_x: bool = True,
):
    """PC corrector on v (docs/methods.md K3, PC 1.): delta = snr / mean(s^2) per crystal,
    v' = v + delta s + sqrt(2 delta) z; then x' = wrap(x - h v') when ``move_x`` (correct_pos).
    """
    mean_sq = segment_mean(score_v.pow(2).mean(-1, keepdim=True), batch_idx, num_crystals)
    delta = snr / mean_sq.clamp_min(1e-12)[batch_idx]  # (N, 1)
    z = _mean_free_noise(v, batch_idx, num_crystals, generator, noise)
    v_new = v + delta * score_v + torch.sqrt(2.0 * delta) * z
    return (wrap(x - h * v_new) if move_x else x), v_new


def ddim_step(y, score, alpha, sigma, alpha_next, sigma_next):
    """Deterministic DDIM step for a VP-type marginal y_t = alpha y_0 + sigma eps (docs K3, PC 2.).

    With eps_hat = -sigma s: y' = (alpha'/alpha) y + (alpha'/alpha sigma - sigma') sigma s.
    """
    ratio = alpha_next / alpha
    return ratio * y + (ratio * sigma - sigma_next) * sigma * score


def pc_predictor(x, v, score_v, t, t_next, h, eps: float = SQRT_EPS):
    """PC predictor on v treating its marginal as VP with alpha_v = e^{-t}, sigma_v (docs K3)."""
    v_new = ddim_step(
        v, score_v, torch.exp(-t), sigma_v(t, eps), torch.exp(-t_next), sigma_v(t_next, eps)
    )
    return wrap(x - h * v_new), v_new
