"""The ``method`` config section of KLDM (docs/methods.md); no torch, so reading a config never
builds a model."""

from __future__ import annotations

from dataclasses import dataclass, field

from crysray.config import MethodConfig


@dataclass(frozen=True)
class KLDMConfig(MethodConfig):
    name: str = "kldm"
    # "x0" (KLDM-eps0: the net predicts the clean lattice, the released setting) or "eps"
    lattice_parameterization: str = "x0"
    tau_min: float = 1e-3  # training draws tau ~ U(tau_min, 1]
    # de novo generation (task dng): atom types by continuous one-hot ("c"), analog bits
    # ("c-ab") or masking diffusion ("d"); the masking loss is the plain masked cross-entropy
    # ("simple") or its ELBO weighting ("elbo")
    type_variant: str = "d"
    masking_loss: str = "simple"
    # Per-atom-count log-length statistics of the training split (LatticeStats.to_dict);
    # empty until training fills them in, then stored with the model.
    lattice_stats: dict = field(default_factory=dict)
