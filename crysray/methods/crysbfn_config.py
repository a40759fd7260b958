"""The ``method`` config section of CrysBFN (docs/methods.md); no torch, so reading a config
never builds a model."""

from __future__ import annotations

from dataclasses import dataclass

from crysray.config import MethodConfig


@dataclass(frozen=True)
class CrysBFNConfig(MethodConfig):
    name: str = "crysbfn"
    beta1_coord: float = 1e3
    sigma1_lattice: float = 0.03162277660168379  # sigma1^2 = 1e-3
    # The network is conditioned on continuous time t = (i-1)/N and on the concentration u,
    # so one model samples with any N; training draws N per batch from this list.
    train_steps: tuple[int, ...] = (10, 20, 50, 100, 200)
    noise_bank_size: int = 32768  # walks per N in the von Mises noise bank (docs C8.7)
    # Cap on the coordinate loss weight N alpha A(alpha) (0 = none); see CrysBFN.loss.
    coord_weight_cap: float = 0.0
    # Share of crystals whose input theta_{i-1} is drawn around the model's own prediction
    # from theta_{i-2} instead of around the truth, as in end-back sampling; see CrysBFN.loss.
    rollout_prob: float = 0.0
    beta1_type: float = 0.5  # discrete flow on atom types (task dng), beta(t) = beta1 t^2
