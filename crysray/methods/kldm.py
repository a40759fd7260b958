"""KLDM: kinetic Langevin diffusion for crystal structure prediction (docs/methods.md).

Fractional coordinates are angles x on the torus moving with auxiliary velocities v (a
trivialised kinetic Langevin diffusion on the TDM clock t = 2 tau, γ = 1, v_0 = 0); the lattice
is diffused as 6 invariant numbers l by a VP SDE on the outer clock tau. The network sees x/2π,
v/2π, l and tau and returns the simplified velocity-score output s_hat (mean-free per crystal)
and the lattice output (clean l_0 for KLDM-eps0, the noise for KLDM-eps). The maths lives in
kldm_process.py, kldm_lattice.py and kldm_types.py, behind one field interface in
kldm_fields.py; the model holds the fields it generates in ``self.fields`` (coordinates,
lattice and, for de novo generation, the atom types) and loss and samplers loop over them.

Samplers, on the grid tau_i = linspace(1, tau_final, steps + 1), the network evaluated at
tau_0 .. tau_{steps-1} only (docs K3):
- ``em``: exponential integrator on v, exponential map on x, Euler–Maruyama on l (1 NFE/step);
- ``pc``: ``corrector_steps`` Langevin corrections of v (each moving x too) and of l, then the
  deterministic DDIM-like predictor (1 + corrector_steps NFEs per step).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
from torch import nn

from crysray.config import RunConfig
from crysray.methods import kldm_lattice as lat
from crysray.methods import kldm_process as kp
from crysray.methods.base import GenerativeMethod
from crysray.methods.fields import fixed_fields, type_network_parts, type_vocabulary
from crysray.methods.kldm_fields import Clock, CoordField, LatticeField, TypeField
from crysray.methods.kldm_types import type_process
from crysray.methods.torus import TWO_PI
from crysray.nets.cspnet import CSPNet, sinusoidal_embedding
from crysray.types import CrystalBatch, SampleSpec, segment_mean


class KLDMDenoiser(nn.Module):
    """(types, x, v, l, tau) -> (s_hat (N, 3) mean-free per crystal, lattice output (B, 6),
    type output (N, D) or None).

    ``type_input`` embeds the type input: atomic numbers (types given) or the noisy types of a
    type variant (crysray.methods.kldm_types); ``type_head``, for generated types, predicts
    the clean types (logits for masking, the clean code for the continuous variants).
    """

    def __init__(
        self,
        hidden: int,
        num_layers: int,
        num_freqs: int,
        time_dim: int,
        type_input: nn.Module,
        type_head: nn.Module | None = None,
    ):
        super().__init__()
        self.time_dim = time_dim
        self.type_input, self.type_head = type_input, type_head
        self.atom_latent = nn.Linear(hidden + time_dim, hidden)
        self.backbone = CSPNet(hidden, num_layers, num_freqs, lattice_dim=6, velocity_dim=3)
        self.velocity_head = nn.Sequential(
            nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 3, bias=False)
        )
        self.lattice_head = nn.Linear(hidden, 6, bias=False)

    def forward(self, types, x, v, l6, tau, num_atoms):
        """x (N, 3) radians, v (N, 3) radians per unit t, l6 (B, 6), tau (B,) outer time."""
        batch_idx = torch.repeat_interleave(
            torch.arange(num_atoms.numel(), device=x.device), num_atoms
        )
        time = sinusoidal_embedding(tau, self.time_dim).to(x.dtype)[batch_idx]
        h = self.atom_latent(torch.cat([self.type_input(types), time], dim=-1))
        # the network works in fractional units: x / 2π (any offset is invisible to differences)
        h = self.backbone(h, x / TWO_PI, l6, num_atoms, velocities=v / TWO_PI).to(x.dtype)
        with torch.autocast(h.device.type, enabled=False):
            s_hat = kp.centre(self.velocity_head(h), batch_idx, num_atoms.numel())
            pooled = segment_mean(h, batch_idx, num_atoms.numel())
            type_out = self.type_head(h) if self.type_head is not None else None
            return s_hat, self.lattice_head(pooled), type_out


class KLDM(GenerativeMethod):
    name = "kldm"
    default_steps = 1000
    samplers: ClassVar[dict[str, dict]] = {
        "pc": {"corrector_steps": 1, "snr": 0.25, "tau_final": 1e-3},
        "em": {"tau_final": 1e-3},
    }

    def __init__(self, config: RunConfig):
        super().__init__(config)
        m, net = config.method, config.net
        if not m.lattice_stats:
            raise ValueError("kldm: method.lattice_stats must be set from the training split")
        self.stats = lat.LatticeStats.from_dict(m.lattice_stats)
        self.lam = kp.lambda_table()
        self.fields = nn.ModuleDict(
            {
                "frac_coords": CoordField(self.lam),
                "lattice": LatticeField(self.stats, m.lattice_parameterization),
                **self.type_fields(config),
            }
        )
        type_input, type_head = type_network_parts(
            self.fields, net.hidden_dim, net.max_atomic_number
        )
        self.denoiser = KLDMDenoiser(
            net.hidden_dim, net.num_layers, net.num_freqs, net.time_dim, type_input, type_head
        )

    @staticmethod
    def type_fields(config: RunConfig) -> dict:
        """DNG: the type variant's process; CSP: none (``type_vocabulary``)."""
        vocab = type_vocabulary(config, "kldm")
        if vocab is None:
            return {}
        m = config.method
        return {
            "atom_types": TypeField(type_process(m.type_variant, len(vocab), m.masking_loss), vocab)
        }

    @classmethod
    def fit_config(cls, config: RunConfig, train_table) -> RunConfig:
        config = super().fit_config(config, train_table)
        if config.method.lattice_stats:
            return config
        lengths, _ = lat.lattice_to_params(torch.as_tensor(train_table.lattice))
        stats = lat.LatticeStats.from_table(torch.as_tensor(train_table.num_atoms), lengths)
        return config.replace("method", lattice_stats=stats.to_dict())

    def _predict(self, spec, states: dict, clock: Clock) -> dict:
        """Network outputs by field for the states at ``clock.tau``."""
        inputs = {
            **fixed_fields(spec),
            **{k: f.net_input(states[k]) for k, f in self.fields.items()},
        }
        x, v = inputs["frac_coords"]
        s_hat, l_out, type_out = self.denoiser(
            inputs["atom_types"], x, v, inputs["lattice"], clock.network_tau(), spec.num_atoms
        )
        return {"frac_coords": s_hat, "lattice": l_out, "atom_types": type_out}

    def loss(self, batch: CrystalBatch, generator: torch.Generator | None = None):
        """Mean over the generated fields (2 for CSP, 3 with types) at tau ~ U(tau_min, 1] per
        crystal (docs K2): plain MSEs for coordinates and lattice, the type variant's own loss."""
        device, m = self.device(), self.config.method
        b = batch.num_crystals
        tau = m.tau_min + (1 - m.tau_min) * torch.rand(b, generator=generator, device=device)
        clock = Clock(tau, batch.num_atoms, batch.batch_idx)
        clean = {k: f.clean(batch) for k, f in self.fields.items()}
        states = {k: f.noisy(clean[k], clock, generator) for k, f in self.fields.items()}
        out = self._predict(batch, states, clock)
        losses = {
            f.loss_name: f.loss(out[k], clean[k], states[k], clock) for k, f in self.fields.items()
        }
        loss = sum(losses.values()) / len(losses)
        return loss, {"loss": loss.item(), **{k: v.item() for k, v in losses.items()}}

    def _move(self, spec, states: dict, clock: Clock, generator) -> dict:
        """One network evaluation and one sampler move of every field."""
        out = self._predict(spec, states, clock)
        return {k: f.step(states[k], out[k], clock, generator) for k, f in self.fields.items()}, out

    @torch.no_grad()
    def sample(
        self,
        spec: SampleSpec,
        steps: int,
        generator: torch.Generator | None = None,
        **sampler_options,
    ) -> CrystalBatch:
        """Integrate from the prior at tau = 1 to tau_final in ``steps`` steps on the model's
        device (``generator``, if given, must live there too); the result is on the CPU.

        Every generated field moves together (the atom types too, for de novo generation);
        fields the spec fixes (CSP atom types) are kept."""
        opts = self.sampler_options(**sampler_options)
        steps = self.check_steps(steps)
        if not 0.0 <= opts["tau_final"] < 1.0:
            raise ValueError(f"tau_final must be in [0, 1), got {opts['tau_final']}")
        if opts["sampler"] == "pc" and opts["corrector_steps"] < 1:
            raise ValueError("pc sampler: corrector_steps must be >= 1")
        spec = self.spec_on_device(spec)
        device = spec.num_atoms.device
        grid = torch.linspace(1.0, opts["tau_final"], steps + 1, device=device)
        clock = Clock(grid[0].view(1, 1), spec.num_atoms, spec.batch_idx, snr=opts.get("snr", 0.0))
        states = {k: f.prior(spec, clock, generator) for k, f in self.fields.items()}
        for i in range(steps):
            tau, tau_next = grid[i].view(1, 1), grid[i + 1].view(1, 1)
            clock = dataclasses.replace(clock, tau=tau, tau_next=tau_next)
            if opts["sampler"] == "em":
                states, out = self._move(
                    spec, states, dataclasses.replace(clock, move="em"), generator
                )
                continue
            for _ in range(opts["corrector_steps"]):
                states, out = self._move(
                    spec, states, dataclasses.replace(clock, move="correct"), generator
                )
            states, out = self._move(
                spec, states, dataclasses.replace(clock, move="predict"), generator
            )
        return self.crystals(spec, states, out, clock, generator)

    def network_evaluations(self, steps: int, **sampler_options) -> int:
        opts = self.sampler_options(**sampler_options)
        per_step = 1 + opts["corrector_steps"] if opts["sampler"] == "pc" else 1
        return per_step * self.check_steps(steps)
