"""CrysBFN: periodic Bayesian flow network for crystals (docs/crysbfn.md).

Coordinates are angles on the torus with a von Mises flow and entropy conditioning, the
lattice is a Gaussian flow on the normalised 3x3 matrix. Crystal structure prediction (CSP):
atom types are given. Sampling uses the end-back strategy (docs §2 "Sampling").

Deliberate departure from the reference: the network sees continuous time t = (i-1)/N instead
of the integer index i. With u (the normalised log concentration) and t, the input has the
same meaning for every N, so one trained model samples with any number of steps; training
draws N per batch from ``method.train_steps``.

Optional training departure (``method.rollout_prob``, benchmarks/results/csp_diagnosis.md):
end-back sampling centres theta_{i-1} on the network's own step i-1 prediction, which at the
first steps is far from any crystal (and whose lattice is exactly 0 after step 1), while the
loss only ever centres it on the truth. With rollout a share of crystals gets theta_{i-1} drawn
around the prediction made from theta_{i-2} (one extra forward pass without gradient), so the
network learns the inputs it meets when sampling. The target is still the truth. In DNG the
type flow of those crystals is centred on the predicted type probabilities, as the sampler
centres it; there rollout is what keeps atoms apart (README, "De novo generation").

Every draw happens on the model's device with the caller's generator (which must live there).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import nn

from crysray.config import RunConfig
from crysray.methods.base import GenerativeMethod
from crysray.methods.flows import DiscreteFlow, GaussianFlow, VonMisesFlow
from crysray.methods.torus import angle_to_frac, frac_to_angle, wrap
from crysray.nets.cspnet import CSPNet, lattice_gram, sinusoidal_embedding
from crysray.types import CrystalBatch, segment_mean


class CrysBFNDenoiser(nn.Module):
    """theta_{i-1} (types, angles m, concentrations u, lattice mean) + t -> predictions.

    CSP: ``types`` are atomic numbers (embedded), the type logits are None. DNG
    (``num_types`` = K > 0): ``types`` are the (N, K) type beliefs theta, fed as 2 theta - 1
    (docs/crysbfn.md §4), and a head returns (N, K) type logits.
    """

    def __init__(
        self,
        hidden: int,
        num_layers: int,
        num_freqs: int,
        time_dim: int,
        max_z: int,
        num_types: int = 0,
    ):
        super().__init__()
        self.time_dim = time_dim
        if num_types:
            self.type_input = nn.Linear(num_types, hidden)
            self.type_head = nn.Linear(hidden, num_types)
        else:
            self.type_embedding = nn.Embedding(max_z + 1, hidden)
        self.atom_latent = nn.Linear(hidden + time_dim + 3, hidden)
        self.backbone = CSPNet(hidden, num_layers, num_freqs)
        self.coord_head = nn.Linear(hidden, 3, bias=False)
        self.lattice_head = nn.Linear(hidden, 9, bias=False)

    def forward(self, types, m, u, t, lattice, num_atoms):
        """types (N,) Z or (N, K) beliefs; m, u (N, 3); t (B,) in [0, 1); lattice (B, 3, 3)
        normalised -> (x_hat (N, 3), L_hat (B, 3, 3), type logits (N, K) or None)."""
        batch_idx = torch.repeat_interleave(
            torch.arange(num_atoms.numel(), device=m.device), num_atoms
        )
        time = sinusoidal_embedding(t, self.time_dim)[batch_idx]
        embedded = (
            self.type_input(2 * types - 1)
            if types.is_floating_point()
            else (self.type_embedding(types))
        )
        h = self.atom_latent(torch.cat([embedded, time, u], dim=-1))
        frac = (m + math.pi) / (2 * math.pi)
        h = self.backbone(h, frac, lattice_gram(lattice), num_atoms).to(m.dtype)
        # the heads stay in float32 even when the backbone runs under bfloat16 autocast
        with torch.autocast(h.device.type, enabled=False):
            x_hat = wrap(m + self.coord_head(h))  # residual on m: periodic-translation equivariant
            mix = self.lattice_head(segment_mean(h, batch_idx, num_atoms.numel())).view(-1, 3, 3)
            logits = self.type_head(h) if types.is_floating_point() else None
            return x_hat, mix @ lattice, logits  # left-multiplying keeps O(3) equivariance


class CrysBFN(GenerativeMethod):
    name = "crysbfn"
    default_steps = 10
    # docs/crysbfn.md §2; N = steps network evaluations
    samplers: ClassVar[dict[str, dict]] = {"end-back": {}}

    def __init__(self, config: RunConfig):
        super().__init__(config)
        m, data = config.method, config.data
        if m.task not in ("csp", "dng"):
            raise ValueError(f"crysbfn: unknown task {m.task!r} (csp or dng)")
        if data.lattice_std <= 0:
            raise ValueError("crysbfn: data.lattice_std must be set from the training split")
        self.dng = m.task == "dng"
        if self.dng and not data.atom_types:
            raise ValueError("crysbfn dng: data.atom_types must be set from the training split")
        net = config.net
        self.denoiser = CrysBFNDenoiser(
            net.hidden_dim,
            net.num_layers,
            net.num_freqs,
            net.time_dim,
            net.max_atomic_number,
            num_types=len(data.atom_types) if self.dng else 0,
        )
        self.coord_flow = VonMisesFlow(m.beta1_coord, m.noise_bank_size)
        self.lattice_flow = GaussianFlow(m.sigma1_lattice)
        self.lattice_std = data.lattice_std
        if self.dng:
            self.type_flow = DiscreteFlow(m.beta1_type, len(data.atom_types))
            self.register_type_vocabulary()

    @classmethod
    def fit_config(cls, config: RunConfig, train_table) -> RunConfig:
        config = super().fit_config(config, train_table)
        if config.data.lattice_std <= 0:
            config = config.replace("data", lattice_std=train_table.lattice_std())
        return config

    def loss(self, batch: CrystalBatch, generator: torch.Generator | None = None):
        """Discrete-time loss at a random step i of a random N (docs §2-3).

        ``batch`` must be on the model's device and ``generator`` (if given) too: every draw
        happens there, so nothing crosses between host and device inside the step.
        """
        device, cfg = self.device(), self.config.method
        choice = torch.randint(len(cfg.train_steps), (1,), generator=generator, device=device)
        steps = cfg.train_steps[int(choice)]
        _, coord_weights, bank = self.coord_flow.tables(steps, device)
        batch_idx = batch.batch_idx
        step = torch.randint(
            1, steps + 1, (batch.num_crystals,), generator=generator, device=device
        )

        x = frac_to_angle(batch.frac_coords)
        lattice = batch.lattice / self.lattice_std
        one_hot = None
        if self.dng:
            index = self.type_indices(batch.atom_types)
            one_hot = nn.functional.one_hot(index, len(self.type_vocab)).float()
        centre, lattice_centre, type_centre = x, lattice, one_hot
        if cfg.rollout_prob > 0:
            centre, lattice_centre, type_centre = self._rollout(
                batch, x, lattice, one_hot, step, steps, generator
            )
        updates = (step - 1)[batch_idx].unsqueeze(-1)  # theta_{i-1} has seen i-1 updates
        m, c = bank.draw(centre, updates, generator)
        u = self.coord_flow.entropy_condition(c, updates)
        t = (step - 1).float() / steps
        lattice_in = self.lattice_flow.draw(lattice_centre, t.view(-1, 1, 1), generator)
        types_in = self._type_input(batch, type_centre, t, generator)
        x_hat, lattice_hat, logits = self.denoiser(types_in, m, u, t, lattice_in, batch.num_atoms)
        w_coord = coord_weights[step - 1]
        if cfg.coord_weight_cap > 0:
            w_coord = w_coord.clamp_max(cfg.coord_weight_cap)
        coord_loss = (w_coord[batch_idx].unsqueeze(-1) * wrap(x - x_hat) ** 2).mean()
        w_lat = self.lattice_flow.loss_weight(step.float(), steps).view(-1, 1, 1)
        lattice_loss = (w_lat * (lattice_hat - lattice) ** 2).mean()
        loss = coord_loss + lattice_loss
        metrics = {"coord_loss": coord_loss.item(), "lattice_loss": lattice_loss.item()}
        if self.dng:
            probs = torch.softmax(logits, dim=-1)
            type_loss = self.type_flow.loss(one_hot, probs, t[batch_idx]).mean()
            loss = loss + type_loss
            metrics["type_loss"] = type_loss.item()
        return loss, {"loss": loss.item(), **metrics, "steps": steps}

    def _type_input(self, batch, type_centre, t, generator):
        """The network's type input for theta_{i-1} at t = (i-1)/N (per crystal): the atomic
        numbers (CSP) or a draw of the type flow around ``type_centre`` (DNG)."""
        if not self.dng:
            return batch.atom_types
        return self.type_flow.draw(type_centre, t[batch.batch_idx].unsqueeze(-1), generator)

    @torch.no_grad()
    def _rollout(self, batch, x, lattice, one_hot, step, steps, generator):
        """Flow centres for theta_{i-1}: the truth, or for a share ``rollout_prob`` of crystals
        with i >= 2, the model's own prediction at step i-1 from theta_{i-2} drawn around the
        truth. End-back sampling feeds the network draws around its previous prediction, never
        around the truth; this teaches it to correct its own errors of the previous step.
        In DNG the type centre of those crystals is the predicted type probabilities, as the
        sampler uses them (``one_hot`` is None in CSP)."""
        device, batch_idx = x.device, batch.batch_idx
        _, _, bank = self.coord_flow.tables(steps, device)
        prev = (step - 2).clamp_min(0)
        updates = prev[batch_idx].unsqueeze(-1)
        m, c = bank.draw(x, updates, generator)
        u = self.coord_flow.entropy_condition(c, updates)
        t = prev.float() / steps
        lattice_in = self.lattice_flow.draw(lattice, t.view(-1, 1, 1), generator)
        types_in = self._type_input(batch, one_hot, t, generator)
        x_prev, lattice_prev, logits = self.denoiser(types_in, m, u, t, lattice_in, batch.num_atoms)
        coin = torch.rand(step.shape, generator=generator, device=device)
        use = (step >= 2) & (coin < self.config.method.rollout_prob)
        use_atoms = use[batch_idx].unsqueeze(-1)
        centre = torch.where(use_atoms, x_prev, x)
        lattice_centre = torch.where(use.view(-1, 1, 1), lattice_prev, lattice)
        type_centre = one_hot
        if self.dng:
            type_centre = torch.where(use_atoms, torch.softmax(logits, dim=-1), one_hot)
        return centre, lattice_centre, type_centre

    @torch.no_grad()
    def sample(
        self,
        spec: CrystalBatch,
        steps: int,
        generator: torch.Generator | None = None,
        **sampler_options,
    ) -> CrystalBatch:
        """End-back sampling with N = ``steps`` network evaluations.

        CSP keeps ``spec``'s atom types; DNG uses only its atom counts, and the types are a
        categorical draw from the step-N probabilities (docs/crysbfn.md §2, pitfall 9).
        Runs on the model's device (``generator``, if given, must live there too); the result is
        returned on the CPU.
        """
        self.sampler_options(**sampler_options)  # end-back has no options; refuses unknown ones
        steps = self.check_steps(steps)
        device = self.device()
        _, _, bank = self.coord_flow.tables(steps, device)
        num_atoms, atom_types = spec.num_atoms.to(device), spec.atom_types.to(device)
        n_atoms, n_crystals = int(spec.num_atoms.sum()), spec.num_atoms.numel()
        index = torch.zeros(1, dtype=torch.long, device=device)
        m, c = bank.draw(torch.zeros((n_atoms, 3), device=device), index, generator)
        u = torch.zeros_like(c)
        lattice_in = torch.zeros((n_crystals, 3, 3), device=device)
        types_in = atom_types
        if self.dng:  # the uniform prior belief over the K types
            k = len(self.type_vocab)
            types_in = torch.full((n_atoms, k), 1.0 / k, device=device)
        for i in range(1, steps + 1):
            t = torch.full((n_crystals,), (i - 1) / steps, device=device)
            x_hat, lattice_hat, logits = self.denoiser(types_in, m, u, t, lattice_in, num_atoms)
            if i < steps:  # end-back: redraw theta_i from the flow centred on the prediction
                index = torch.full((1,), i, dtype=torch.long, device=device)
                m, c = bank.draw(x_hat, index, generator)
                u = self.coord_flow.entropy_condition(c, index)
                lattice_in = self.lattice_flow.draw(lattice_hat, i / steps, generator)
                if self.dng:
                    probs = torch.softmax(logits, dim=-1)
                    types_in = self.type_flow.draw(probs, i / steps, generator)
        if self.dng:
            draw = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)
            atom_types = self.type_vocab[draw.squeeze(-1)]
        return CrystalBatch(
            frac_coords=angle_to_frac(x_hat).float().cpu(),
            lattice=(lattice_hat * self.lattice_std).float().cpu(),
            atom_types=atom_types.cpu(),
            num_atoms=spec.num_atoms.cpu(),
        )
