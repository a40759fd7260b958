"""CrysBFN's field processes: von Mises flow on coordinates, Gaussian flow on the lattice and,
for de novo generation, the discrete flow on atom types (docs/methods.md C2-3).

Every field follows the same Bayesian flow pattern: the network input theta_i is a draw of the
flow after i updates around a centre (the truth in training, the network's last prediction in
end-back sampling), so ``step`` is ``noisy`` around the prediction's centre.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from crysray.methods.fields import FieldProcess, TypeVocabulary
from crysray.methods.flows import DiscreteFlow, GaussianFlow, VonMisesFlow
from crysray.methods.torus import angle_to_frac, frac_to_angle, wrap


@dataclass(frozen=True)
class FlowTime:
    """theta after ``updates`` Bayesian updates of an N = ``steps`` flow, t = updates / N.

    ``updates`` is one int for the whole batch (sampling) or (B,) long per crystal (training);
    the accessors give the shapes each field needs.
    """

    updates: torch.Tensor | int
    steps: int
    batch_idx: torch.Tensor  # (N,) long

    @property
    def per_crystal(self) -> bool:
        return isinstance(self.updates, torch.Tensor)

    def atom_updates(self) -> torch.Tensor:
        """(N, 1) long per atom, or (1,) for the whole batch."""
        if self.per_crystal:
            return self.updates[self.batch_idx].unsqueeze(-1)
        return torch.full((1,), self.updates, dtype=torch.long, device=self.batch_idx.device)

    def crystal_t(self):
        """t as (B, 1, 1), or one float for the whole batch."""
        if self.per_crystal:
            return (self.updates.float() / self.steps).view(-1, 1, 1)
        return self.updates / self.steps

    def atom_t(self):
        """t as (N, 1), or one float for the whole batch."""
        if self.per_crystal:
            return (self.updates.float() / self.steps)[self.batch_idx].unsqueeze(-1)
        return self.updates / self.steps

    def network_t(self, num_crystals: int) -> torch.Tensor:
        """(B,) t the network is conditioned on."""
        if self.per_crystal:
            return self.updates.float() / self.steps
        return torch.full((num_crystals,), self.updates / self.steps, device=self.batch_idx.device)


class FlowField(FieldProcess):
    """A field with a Bayesian flow: sampling redraws the flow around the prediction."""

    def centre(self, out) -> torch.Tensor:
        """The flow centre the network output stands for (rollout and end-back sampling)."""
        return out

    def step(self, state, out, time, generator=None):
        return self.noisy(self.centre(out), time, generator)


class CoordField(FlowField):
    """Angles x = 2 pi f - pi on the torus; state (m, u): the flow's mean angle and normalised
    log concentration (docs C2)."""

    loss_name = "coord_loss"

    def __init__(self, flow: VonMisesFlow, weight_cap: float = 0.0):
        super().__init__()
        self.flow, self.weight_cap = flow, weight_cap

    def clean(self, batch):
        return frac_to_angle(batch.frac_coords)

    def noisy(self, clean, time, generator=None):
        _, _, bank = self.flow.tables(time.steps, clean.device)
        updates = time.atom_updates()
        m, c = bank.draw(clean, updates, generator)
        return m, self.flow.entropy_condition(c, updates)

    def loss(self, out, clean, state, time):
        """N alpha_i A(alpha_i) |wrap(x - x_hat)|^2 (docs C3), the weight optionally capped."""
        _, weights, _ = self.flow.tables(time.steps, clean.device)
        w = weights[time.updates]  # theta_{i-1} -> the weight of step i
        if self.weight_cap > 0:
            w = w.clamp_max(self.weight_cap)
        return (w[time.batch_idx].unsqueeze(-1) * wrap(clean - out) ** 2).mean()

    def prior(self, spec, time, generator=None):
        """theta_0: uniform angles, zero concentration (a draw around any centre at i = 0)."""
        zeros = torch.zeros((len(time.batch_idx), 3), device=time.batch_idx.device)
        return self.noisy(zeros, time, generator)

    def decode(self, state, out, time, generator=None):
        return angle_to_frac(out).float()


class LatticeField(FlowField):
    """The lattice divided by ``lattice_std`` under a Gaussian flow (docs C2-3)."""

    per_atom, loss_name = False, "lattice_loss"

    def __init__(self, flow: GaussianFlow, lattice_std: float):
        super().__init__()
        self.flow, self.lattice_std = flow, lattice_std

    def clean(self, batch):
        return batch.lattice / self.lattice_std

    def noisy(self, clean, time, generator=None):
        return self.flow.draw(clean, time.crystal_t(), generator)

    def loss(self, out, clean, state, time):
        step = (time.updates + 1).float()  # theta_{i-1} -> the weight of step i
        w = self.flow.loss_weight(step, time.steps).view(-1, 1, 1)
        return (w * (out - clean) ** 2).mean()

    def prior(self, spec, time, generator=None):
        """The prior mean 0: end-back sampling starts from the network's first prediction."""
        return torch.zeros((len(spec.num_atoms), 3, 3), device=time.batch_idx.device)

    def decode(self, state, out, time, generator=None):
        return (out * self.lattice_std).float()


class CentredLinear(nn.Linear):
    """Linear layer of 2 theta - 1: type beliefs centred as the reference feeds them (C4)."""

    def forward(self, theta):
        return super().forward(2 * theta - 1)


class TypeField(FlowField):
    """Atom types as beliefs theta over the K vocabulary types under the discrete flow; the
    network reads theta and returns K logits (docs C3, "Atom types")."""

    loss_name = "type_loss"

    def __init__(self, flow: DiscreteFlow, vocab: TypeVocabulary):
        super().__init__()
        self.flow, self.vocab = flow, vocab

    def input_layer(self, hidden: int) -> nn.Module:
        return CentredLinear(len(self.vocab), hidden)

    def head(self, hidden: int) -> nn.Module:
        return nn.Linear(hidden, len(self.vocab))

    def centre(self, out):
        return torch.softmax(out, dim=-1)

    def clean(self, batch):
        return nn.functional.one_hot(self.vocab.indices(batch.atom_types), len(self.vocab)).float()

    def noisy(self, clean, time, generator=None):
        return self.flow.draw(clean, time.atom_t(), generator)

    def loss(self, out, clean, state, time):
        return self.flow.loss(clean, self.centre(out), time.atom_t()).mean()

    def prior(self, spec, time, generator=None):
        """The uniform belief over the K types."""
        k = len(self.vocab)
        return torch.full((len(time.batch_idx), k), 1.0 / k, device=time.batch_idx.device)

    def decode(self, state, out, time, generator=None):
        """A categorical draw from the step-N probabilities (docs C2, pitfall C8.9)."""
        draw = torch.multinomial(self.centre(out), 1, generator=generator)
        return self.vocab.atomic_numbers(draw.squeeze(-1))
