"""KLDM atom types for de novo generation: the paper's three variants (docs/methods.md K2.4, K3).

Types are indices 0..K-1 into the model's vocabulary (``data.atom_types``). Every variant
turns the clean indices into a network input at time tau, gives the training loss of the
network's type output, and moves the types one sampler step:

- ``c`` (continuous one-hot): VP diffusion (the lattice's beta schedule) on one-hot vectors,
  the network predicts the clean vector, decoded by argmax;
- ``c-ab`` (analog bits): VP diffusion on ceil(log2 K) bits mapped to +-1, clean-bit prediction,
  decoded by thresholding at 0; a code >= K (possible with K not a power of 2) is clamped to
  K - 1, so no out-of-vocabulary atomic number is ever produced;
- ``d`` (masking diffusion): each token is kept with probability alpha(tau) = (1 - 2e)(1 - tau)
  + e, else replaced by the mask id K; masked tokens unmask to a draw from the network's
  probabilities with probability (alpha_s - alpha_tau) / (1 - alpha_tau), and whatever is
  still masked after the last step is unmasked by argmax (pitfall K6.11).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
from torch import nn

from crysray.methods import kldm_lattice as vp
from crysray.methods.kldm_process import ddim_step

MASK_EPS = 1e-4  # docs K2.4, e


class TypeProcess(ABC):
    """One atom-type variant. ``tau`` arguments are per atom, shape (N, 1)."""

    def __init__(self, num_types: int):
        self.k = num_types

    @property
    @abstractmethod
    def input_dim(self) -> int:
        """Width of the network input (an embedding size for index inputs)."""

    @property
    @abstractmethod
    def output_dim(self) -> int: ...

    def input_layer(self, hidden: int) -> nn.Module:
        return nn.Linear(self.input_dim, hidden, bias=False)

    @abstractmethod
    def noisy(self, index, tau, generator=None):
        """The network input at tau for clean type indices (N,)."""

    @abstractmethod
    def loss(self, out, index, noisy, tau) -> torch.Tensor:
        """Scalar loss of the network output ``out`` (N, output_dim)."""

    @abstractmethod
    def prior(self, n: int, generator, device):
        """The input at tau = 1."""

    @abstractmethod
    def step(self, h, out, tau, tau_next, generator, deterministic: bool):
        """One reverse step tau -> tau_next: stochastic (EM) or the PC predictor."""

    def correct(self, h, out, tau, generator, snr: float):
        """The PC corrector (none by default, as for masking diffusion)."""
        return h

    @abstractmethod
    def decode(self, h, out) -> torch.Tensor:
        """Final indices (N,) in [0, K) from the last state and network output."""


class ContinuousTypes(TypeProcess):
    """VP diffusion on a code of the types; the network predicts the clean code (x0)."""

    @property
    def input_dim(self) -> int:
        return self.output_dim

    @abstractmethod
    def encode(self, index) -> torch.Tensor: ...

    def noisy(self, index, tau, generator=None):
        return vp.vp_forward(self.encode(index), tau, generator)[0]

    def loss(self, out, index, noisy, tau):
        return nn.functional.mse_loss(out, self.encode(index))

    def prior(self, n, generator, device):
        return torch.randn((n, self.output_dim), generator=generator, device=device)

    def step(self, h, out, tau, tau_next, generator, deterministic):
        score = vp.lattice_score(h, out, tau, "x0")
        if not deterministic:
            return vp.lattice_em_step(h, score, tau, tau_next - tau, generator)
        alpha, sigma = vp.vp_alpha_sigma(tau)
        alpha_next, sigma_next = vp.vp_alpha_sigma(tau_next)
        return ddim_step(h, score, alpha, sigma, alpha_next, sigma_next)

    def correct(self, h, out, tau, generator, snr):
        return vp.lattice_corrector(h, vp.lattice_score(h, out, tau, "x0"), generator, snr=snr)


class OneHotTypes(ContinuousTypes):
    """(C): one-hot vectors of width K, decoded by argmax."""

    @property
    def output_dim(self) -> int:
        return self.k

    def encode(self, index):
        return nn.functional.one_hot(index, self.k).float()

    def decode(self, h, out):
        return h.argmax(-1)  # the state at tau_final (no extra denoising step, docs K3)


class AnalogBitsTypes(ContinuousTypes):
    """(C-AB): ceil(log2 K) bits as +-1, decoded by thresholding; codes >= K clamp to K - 1."""

    @property
    def output_dim(self) -> int:
        return max(1, math.ceil(math.log2(self.k)))

    def _powers(self, device):
        return 2 ** torch.arange(self.output_dim, device=device)

    def encode(self, index):
        bits = (index.unsqueeze(-1) // self._powers(index.device)) % 2
        return 2.0 * bits.float() - 1.0

    def decode(self, h, out):
        code = ((h > 0).long() * self._powers(h.device)).sum(-1)
        return code.clamp_max(self.k - 1)


class MaskedTypes(TypeProcess):
    """(D): masking diffusion with a linear keep schedule; the network gives K logits."""

    def __init__(self, num_types: int, loss_kind: str = "simple"):
        super().__init__(num_types)
        if loss_kind not in ("simple", "elbo"):
            raise ValueError(f"masking loss must be 'simple' or 'elbo', got {loss_kind!r}")
        self.loss_kind = loss_kind

    @property
    def input_dim(self) -> int:
        return self.k + 1  # index K is the mask

    @property
    def output_dim(self) -> int:
        return self.k

    def input_layer(self, hidden):
        return nn.Embedding(self.input_dim, hidden)

    @staticmethod
    def keep(tau):
        return (1 - 2 * MASK_EPS) * (1 - tau) + MASK_EPS

    def noisy(self, index, tau, generator=None):
        u = torch.rand(index.shape, generator=generator, device=index.device)
        return torch.where(u < self.keep(tau).reshape(-1), index, self.k)

    def loss(self, out, index, noisy, tau):
        """Cross-entropy on masked tokens, averaged over all atoms; ``elbo`` weights it by
        -alpha'/(1 - alpha) (MD4/MDLM), ``simple`` does not."""
        ce = nn.functional.cross_entropy(out, index, reduction="none")
        masked = (noisy == self.k).float()
        if self.loss_kind == "elbo":
            masked = masked * (1 - 2 * MASK_EPS) / (1 - self.keep(tau).reshape(-1))
        return (ce * masked).mean()

    def prior(self, n, generator, device):
        return torch.full((n,), self.k, dtype=torch.long, device=device)

    def step(self, h, out, tau, tau_next, generator, deterministic):
        """Ancestral unmasking (the same for EM and PC: the PC predictor of (D) is this step)."""
        keep, keep_next = self.keep(tau), self.keep(tau_next)
        p_unmask = ((keep_next - keep) / (1 - keep)).reshape(-1)
        u = torch.rand(h.shape, generator=generator, device=h.device)
        draw = torch.multinomial(torch.softmax(out, -1), 1, generator=generator).squeeze(-1)
        return torch.where((h == self.k) & (u < p_unmask), draw, h)

    def decode(self, h, out):
        return torch.where(h == self.k, out.argmax(-1), h)


def type_process(variant: str, num_types: int, masking_loss: str = "simple") -> TypeProcess:
    if variant == "c":
        return OneHotTypes(num_types)
    if variant == "c-ab":
        return AnalogBitsTypes(num_types)
    if variant == "d":
        return MaskedTypes(num_types, masking_loss)
    raise ValueError(f"unknown KLDM type variant {variant!r} (c, c-ab or d)")
