"""KLDM's field processes: kinetic Langevin diffusion of the coordinates, the VP SDE of the
6 lattice numbers and, for de novo generation, one of the atom-type variants (docs/methods.md).

The maths lives in kldm_process.py, kldm_lattice.py and kldm_types.py; these classes give
each field the one interface of crysray.methods.fields. Sampler moves (``Clock.move``): ``em``
(exponential integrator / Euler-Maruyama), ``correct`` (PC Langevin corrector) and ``predict``
(PC deterministic predictor). The network output of a field is turned into its score here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from crysray.methods import kldm_lattice as lat
from crysray.methods import kldm_process as kp
from crysray.methods.fields import FieldProcess, TypeVocabulary
from crysray.methods.kldm_types import TypeProcess
from crysray.methods.torus import angle_to_frac, frac_to_angle


@dataclass(frozen=True)
class Clock:
    """Outer time tau of every field: (B,) per crystal in training, (1, 1) in sampling; for a
    sampler move also the next time and which move it is."""

    tau: torch.Tensor
    num_atoms: torch.Tensor  # (B,) long
    batch_idx: torch.Tensor  # (N,) long
    tau_next: torch.Tensor | None = None
    move: str = ""  # "em", "correct" or "predict"
    snr: float = 0.25  # PC corrector

    @property
    def num_crystals(self) -> int:
        return self.num_atoms.numel()

    def atom_tau(self) -> torch.Tensor:
        """(N, 1) per-atom tau (training)."""
        return self.tau[self.batch_idx].unsqueeze(-1)

    def network_tau(self) -> torch.Tensor:
        """(B,) tau the network is conditioned on."""
        if self.tau.dim() == 1:
            return self.tau
        return self.tau.reshape(1).expand(self.num_crystals)


class CoordField(FieldProcess):
    """Angles x with velocities v, gamma = 1, v_0 = 0 (docs K1); the network output is the
    simplified velocity score s_hat; a state's first two entries are (x, v)."""

    loss_name = "coord_loss"

    def __init__(self, lam: kp.LambdaTable):
        super().__init__()
        self.lam = lam

    def clean(self, batch):
        return frac_to_angle(batch.frac_coords)

    def _t_atom(self, clock):
        return kp.t_per_atom(kp.tdm_time(clock.tau), clock.batch_idx)

    def noisy(self, clean, clock, generator=None):
        t = self._t_atom(clock)
        return kp.sample_forward(clean, t, clock.batch_idx, clock.num_crystals, generator)

    def net_input(self, state):
        return state[0], state[1]

    def loss(self, out, clean, state, clock):
        t, b = self._t_atom(clock), clock.num_crystals
        target = kp.simplified_target(state, t, clock.batch_idx, b, self.lam)
        return nn.functional.mse_loss(out, target)

    def prior(self, spec, clock, generator=None):
        n, device = len(clock.batch_idx), clock.batch_idx.device
        return kp.prior(n, clock.batch_idx, clock.num_crystals, generator, device)

    def step(self, state, out, clock, generator=None):
        """The velocity score (docs K1.5, assembled as in pitfall K6.5), then the move."""
        x, v = state[0], state[1]
        tau, tau_next, idx, b = clock.tau, clock.tau_next, clock.batch_idx, clock.num_crystals
        s_v = kp.velocity_score(v, out, kp.tdm_time(tau).expand(x.shape[0], 1), self.lam)
        h = kp.tdm_time(tau - tau_next)  # the TDM step 2 |dtau|
        if clock.move == "em":
            return kp.em_step(x, v, s_v, h, idx, b, generator)
        if clock.move == "correct":
            return kp.langevin_corrector(x, v, s_v, h, idx, b, generator, snr=clock.snr)
        return kp.pc_predictor(x, v, s_v, kp.tdm_time(tau), kp.tdm_time(tau_next), h)

    def decode(self, state, out, clock, generator=None):
        return angle_to_frac(state[0]).float()


class LatticeField(FieldProcess):
    """The 6 invariant lattice numbers l under a VP SDE (docs K2.3); state (l, eps), eps the
    training noise (None when sampling)."""

    per_atom, loss_name = False, "lattice_loss"

    def __init__(self, stats: lat.LatticeStats, parameterization: str):
        super().__init__()
        lat.lattice_target(torch.zeros(1), torch.zeros(1), parameterization)  # checks the name
        self.stats, self.parameterization = stats, parameterization

    def clean(self, batch):
        return lat.encode_lattice(batch.lattice, batch.num_atoms, self.stats)

    def noisy(self, clean, clock, generator=None):
        return lat.vp_forward(clean, clock.tau.unsqueeze(-1), generator)

    def net_input(self, state):
        return state[0]

    def loss(self, out, clean, state, clock):
        target = lat.lattice_target(clean, state[1], self.parameterization)
        return nn.functional.mse_loss(out, target)

    def prior(self, spec, clock, generator=None):
        device = clock.batch_idx.device
        return torch.randn((clock.num_crystals, 6), generator=generator, device=device), None

    def step(self, state, out, clock, generator=None):
        l6, tau, tau_next = state[0], clock.tau, clock.tau_next
        score = lat.lattice_score(l6, out, tau, self.parameterization)
        if clock.move == "em":
            return lat.lattice_em_step(l6, score, tau, tau_next - tau, generator), None
        if clock.move == "correct":
            return lat.lattice_corrector(l6, score, generator, snr=clock.snr), None
        alpha, sigma = lat.vp_alpha_sigma(tau)
        alpha_next, sigma_next = lat.vp_alpha_sigma(tau_next)
        return kp.ddim_step(l6, score, alpha, sigma, alpha_next, sigma_next), None

    def decode(self, state, out, clock, generator=None):
        return lat.decode_lattice(state[0], clock.num_atoms, self.stats).float()


class TypeField(FieldProcess):
    """Atom types as vocabulary indices under one of the paper's variants (kldm_types)."""

    loss_name = "type_loss"

    def __init__(self, process: TypeProcess, vocab: TypeVocabulary):
        super().__init__()
        self.process, self.vocab = process, vocab

    def input_layer(self, hidden: int) -> nn.Module:
        return self.process.input_layer(hidden)

    def head(self, hidden: int) -> nn.Module:
        return nn.Linear(hidden, self.process.output_dim)

    def clean(self, batch):
        return self.vocab.indices(batch.atom_types)

    def noisy(self, clean, clock, generator=None):
        return self.process.noisy(clean, clock.atom_tau(), generator)

    def loss(self, out, clean, state, clock):
        return self.process.loss(out, clean, state, clock.atom_tau())

    def prior(self, spec, clock, generator=None):
        return self.process.prior(len(clock.batch_idx), generator, clock.batch_idx.device)

    def step(self, state, out, clock, generator=None):
        if clock.move == "correct":
            return self.process.correct(state, out, clock.tau, generator, clock.snr)
        deterministic = clock.move == "predict"
        return self.process.step(state, out, clock.tau, clock.tau_next, generator, deterministic)

    def decode(self, state, out, clock, generator=None):
        return self.vocab.atomic_numbers(self.process.decode(state, out))
