"""KLDM: kinetic Langevin diffusion for crystal structure prediction (docs/kldm.md).

Fractional coordinates are angles x on the torus moving with auxiliary velocities v (a
trivialised kinetic Langevin diffusion on the TDM clock t = 2 tau, γ = 1, v_0 = 0); the lattice
is diffused as 6 invariant numbers l by a VP SDE on the outer clock tau. The network sees x/2π,
v/2π, l and tau and returns the simplified velocity-score output s_hat (mean-free per crystal)
and the lattice output (clean l_0 for KLDM-eps0, the noise for KLDM-eps). The maths lives in
kldm_process.py and kldm_lattice.py; this module assembles loss and samplers.

Samplers, on the grid tau_i = linspace(1, tau_final, steps + 1), the network evaluated at
tau_0 .. tau_{steps-1} only (docs §3):
- ``em``: exponential integrator on v, exponential map on x, Euler–Maruyama on l (1 NFE/step);
- ``pc``: ``corrector_steps`` Langevin corrections of v (each moving x too) and of l, then the
  deterministic DDIM-like predictor (1 + corrector_steps NFEs per step).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from crysray.config import RunConfig
from crysray.methods import kldm_lattice as lat
from crysray.methods import kldm_process as kp
from crysray.methods.base import GenerativeMethod
from crysray.methods.kldm_types import TypeProcess, type_process
from crysray.methods.torus import TWO_PI, angle_to_frac, frac_to_angle
from crysray.nets.cspnet import CSPNet, sinusoidal_embedding
from crysray.types import CrystalBatch, segment_mean


class KLDMDenoiser(nn.Module):
    """(types, x, v, l, tau) -> (s_hat (N, 3) mean-free per crystal, lattice output (B, 6),
    type output (N, D) or None).

    CSP: ``types`` are atomic numbers, embedded. DNG: ``types`` are the noisy types of the
    chosen variant (crysray.methods.kldm_types) through its input layer, and a head predicts
    the clean types (logits for masking, the clean code for the continuous variants).
    """

    def __init__(
        self,
        hidden: int,
        num_layers: int,
        num_freqs: int,
        time_dim: int,
        max_z: int,
        types: TypeProcess | None = None,
    ):
        super().__init__()
        self.time_dim = time_dim
        if types is None:
            self.type_embedding = nn.Embedding(max_z + 1, hidden)
        else:
            self.type_input = types.input_layer(hidden)
            self.type_head = nn.Linear(hidden, types.output_dim)
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
        dng = hasattr(self, "type_head")
        embedded = self.type_input(types) if dng else self.type_embedding(types)
        h = self.atom_latent(torch.cat([embedded, time], dim=-1))
        # the network works in fractional units: x / 2π (any offset is invisible to differences)
        h = self.backbone(h, x / TWO_PI, l6, num_atoms, velocities=v / TWO_PI).to(x.dtype)
        with torch.autocast(h.device.type, enabled=False):
            s_hat = kp.centre(self.velocity_head(h), batch_idx, num_atoms.numel())
            pooled = segment_mean(h, batch_idx, num_atoms.numel())
            type_out = self.type_head(h) if dng else None
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
        m = config.method
        if m.task not in ("csp", "dng"):
            raise ValueError(f"kldm: unknown task {m.task!r} (csp or dng)")
        if not m.lattice_stats:
            raise ValueError("kldm: method.lattice_stats must be set from the training split")
        lat.lattice_target(torch.zeros(1), torch.zeros(1), m.lattice_parameterization)  # checks
        self.types = None
        if m.task == "dng":
            if not config.data.atom_types:
                raise ValueError("kldm dng: data.atom_types must be set from the training split")
            self.types = type_process(m.type_variant, len(config.data.atom_types), m.masking_loss)
            self.register_type_vocabulary()
        net = config.net
        self.denoiser = KLDMDenoiser(
            net.hidden_dim,
            net.num_layers,
            net.num_freqs,
            net.time_dim,
            net.max_atomic_number,
            self.types,
        )
        self.stats = lat.LatticeStats.from_dict(m.lattice_stats)
        self.lam = kp.lambda_table()

    @classmethod
    def fit_config(cls, config: RunConfig, train_table) -> RunConfig:
        config = super().fit_config(config, train_table)
        if config.method.lattice_stats:
            return config
        lengths, _ = lat.lattice_to_params(torch.as_tensor(train_table.lattice))
        stats = lat.LatticeStats.from_table(torch.as_tensor(train_table.num_atoms), lengths)
        return config.replace("method", lattice_stats=stats.to_dict())

    def loss(self, batch: CrystalBatch, generator: torch.Generator | None = None):
        """Mean over modalities (2 for CSP, 3 with types) at tau ~ U(tau_min, 1] per crystal
        (docs §2): plain MSEs for coordinates and lattice, the type variant's own loss."""
        device, m = self.device(), self.config.method
        b, batch_idx = batch.num_crystals, batch.batch_idx
        tau = m.tau_min + (1 - m.tau_min) * torch.rand(b, generator=generator, device=device)
        t_atom = kp.t_per_atom(kp.tdm_time(tau), batch_idx)
        draw = kp.sample_forward(frac_to_angle(batch.frac_coords), t_atom, batch_idx, b, generator)
        target_v = kp.simplified_target(draw, t_atom, batch_idx, b, self.lam)
        l0 = lat.encode_lattice(batch.lattice, batch.num_atoms, self.stats)
        l_tau, eps = lat.vp_forward(l0, tau.unsqueeze(-1), generator)

        types_in = batch.atom_types
        if self.types is not None:
            index = self.type_indices(batch.atom_types)
            tau_atom = tau[batch_idx].unsqueeze(-1)
            types_in = self.types.noisy(index, tau_atom, generator)
        s_hat, l_out, type_out = self.denoiser(
            types_in, draw.x_t, draw.v_t, l_tau, tau, batch.num_atoms
        )
        losses = {
            "coord_loss": nn.functional.mse_loss(s_hat, target_v),
            "lattice_loss": nn.functional.mse_loss(
                l_out, lat.lattice_target(l0, eps, m.lattice_parameterization)
            ),
        }
        if self.types is not None:
            losses["type_loss"] = self.types.loss(type_out, index, types_in, tau_atom)
        loss = sum(losses.values()) / len(losses)
        return loss, {"loss": loss.item(), **{k: v.item() for k, v in losses.items()}}

    def _scores(self, types, x, v, l6, tau, num_atoms):
        """Velocity score (docs §1.5, assembled as in pitfall §6.5), lattice score and the
        network's type output (None for CSP)."""
        tau_b = tau.reshape(1).expand(num_atoms.numel())
        s_hat, l_out, type_out = self.denoiser(types, x, v, l6, tau_b, num_atoms)
        t_atom = kp.tdm_time(tau).expand(x.shape[0], 1)
        s_v = kp.velocity_score(v, s_hat, t_atom, self.lam)
        s_l = lat.lattice_score(l6, l_out, tau, self.config.method.lattice_parameterization)
        return s_v, s_l, type_out

    @torch.no_grad()
    def sample(
        self,
        spec: CrystalBatch,
        steps: int,
        generator: torch.Generator | None = None,
        **sampler_options,
    ) -> CrystalBatch:
        """Integrate from the prior at tau = 1 to tau_final in ``steps`` steps on the model's
        device (``generator``, if given, must live there too); the result is on the CPU.

        CSP keeps ``spec``'s atom types; DNG uses only its atom counts and generates the types
        with the model's type variant alongside coordinates and lattice."""
        opts = self.sampler_options(**sampler_options)
        steps = self.check_steps(steps)
        if not 0.0 <= opts["tau_final"] < 1.0:
            raise ValueError(f"tau_final must be in [0, 1), got {opts['tau_final']}")
        if opts["sampler"] == "pc" and opts["corrector_steps"] < 1:
            raise ValueError("pc sampler: corrector_steps must be >= 1")
        device = self.device()
        num_atoms, atom_types = spec.num_atoms.to(device), spec.atom_types.to(device)
        batch_idx = torch.repeat_interleave(
            torch.arange(num_atoms.numel(), device=device), num_atoms
        )
        b, n = num_atoms.numel(), int(spec.num_atoms.sum())
        x, v = kp.prior(n, batch_idx, b, generator, device)
        l6 = torch.randn((b, 6), generator=generator, device=device)
        grid = torch.linspace(1.0, opts["tau_final"], steps + 1, device=device)
        types, type_out = atom_types, None
        if self.types is not None:
            types = self.types.prior(n, generator, device)

        def scores(x, v, l6, types, tau):
            return self._scores(types, x, v, l6, tau, num_atoms)

        for i in range(steps):
            tau, tau_next = grid[i].view(1, 1), grid[i + 1].view(1, 1)
            h = kp.tdm_time(tau - tau_next)  # the TDM step 2 |dtau|
            if opts["sampler"] == "em":
                s_v, s_l, type_out = scores(x, v, l6, types, tau)
                x, v = kp.em_step(x, v, s_v, h, batch_idx, b, generator)
                l6 = lat.lattice_em_step(l6, s_l, tau, tau_next - tau, generator)
                if self.types is not None:
                    types = self.types.step(types, type_out, tau, tau_next, generator, False)
                continue
            for _ in range(opts["corrector_steps"]):
                s_v, s_l, type_out = scores(x, v, l6, types, tau)
                x, v = kp.langevin_corrector(x, v, s_v, h, batch_idx, b, generator, snr=opts["snr"])
                l6 = lat.lattice_corrector(l6, s_l, generator, snr=opts["snr"])
                if self.types is not None:
                    types = self.types.correct(types, type_out, tau, generator, opts["snr"])
            s_v, s_l, type_out = scores(x, v, l6, types, tau)
            t, t_next = kp.tdm_time(tau), kp.tdm_time(tau_next)
            x, v = kp.pc_predictor(x, v, s_v, t, t_next, h)
            alpha, sigma = lat.vp_alpha_sigma(tau)
            alpha_next, sigma_next = lat.vp_alpha_sigma(tau_next)
            l6 = kp.ddim_step(l6, s_l, alpha, sigma, alpha_next, sigma_next)
            if self.types is not None:
                types = self.types.step(types, type_out, tau, tau_next, generator, True)
        if self.types is not None:
            atom_types = self.type_vocab[self.types.decode(types, type_out)]
        return CrystalBatch(
            frac_coords=angle_to_frac(x).float().cpu(),
            lattice=lat.decode_lattice(l6, num_atoms, self.stats).float().cpu(),
            atom_types=atom_types.cpu(),
            num_atoms=spec.num_atoms.cpu(),
        )

    def network_evaluations(self, steps: int, **sampler_options) -> int:
        opts = self.sampler_options(**sampler_options)
        per_step = 1 + opts["corrector_steps"] if opts["sampler"] == "pc" else 1
        return per_step * self.check_steps(steps)
