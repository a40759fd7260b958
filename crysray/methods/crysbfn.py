"""CrysBFN: periodic Bayesian flow network for crystals (docs/methods.md).

Coordinates are angles on the torus with a von Mises flow and entropy conditioning, the
lattice is a Gaussian flow on the normalised 3x3 matrix. Crystal structure prediction (CSP):
atom types are given. Sampling uses the end-back strategy (docs C2 "Sampling").

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

The generated fields are processes in ``self.fields`` (crysray.methods.crysbfn_fields): the
coordinates and the lattice, plus the atom types for de novo generation (DNG); in CSP the types
come from the sample spec. Loss and sampler loop over the fields and never ask for the task.

Every draw happens on the model's device with the caller's generator (which must live there).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import nn

from crysray.config import RunConfig
from crysray.methods.base import GenerativeMethod
from crysray.methods.crysbfn_fields import CoordField, FlowTime, LatticeField, TypeField
from crysray.methods.fields import fixed_fields, type_network_parts, type_vocabulary
from crysray.methods.flows import DiscreteFlow, GaussianFlow, VonMisesFlow
from crysray.methods.torus import wrap
from crysray.nets.cspnet import CSPNet, lattice_gram, sinusoidal_embedding
from crysray.types import CrystalBatch, SampleSpec, segment_mean


class CrysBFNDenoiser(nn.Module):
    """theta_{i-1} (types, angles m, concentrations u, lattice mean) + t -> predictions.

    ``type_input`` embeds the network's type input: atomic numbers (types given) or the (N, K)
    type beliefs theta (types generated), and ``type_head``, for generated types, returns
    (N, K) type logits.
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
        h = self.atom_latent(torch.cat([self.type_input(types), time, u], dim=-1))
        frac = (m + math.pi) / (2 * math.pi)
        h = self.backbone(h, frac, lattice_gram(lattice), num_atoms).to(m.dtype)
        # the heads stay in float32 even when the backbone runs under bfloat16 autocast
        with torch.autocast(h.device.type, enabled=False):
            x_hat = wrap(m + self.coord_head(h))  # residual on m: periodic-translation equivariant
            mix = self.lattice_head(segment_mean(h, batch_idx, num_atoms.numel())).view(-1, 3, 3)
            logits = self.type_head(h) if self.type_head is not None else None
            return x_hat, mix @ lattice, logits  # left-multiplying keeps O(3) equivariance


class CrysBFN(GenerativeMethod):
    name = "crysbfn"
    default_steps = 10
    # docs/methods.md C2; N = steps network evaluations
    samplers: ClassVar[dict[str, dict]] = {"end-back": {}}

    def __init__(self, config: RunConfig):
        super().__init__(config)
        m, data, net = config.method, config.data, config.net
        if data.lattice_std <= 0:
            raise ValueError("crysbfn: data.lattice_std must be set from the training split")
        self.coord_flow = VonMisesFlow(m.beta1_coord, m.noise_bank_size)
        self.lattice_flow = GaussianFlow(m.sigma1_lattice)
        self.lattice_std = data.lattice_std
        self.fields = nn.ModuleDict(
            {
                "frac_coords": CoordField(self.coord_flow, m.coord_weight_cap),
                "lattice": LatticeField(self.lattice_flow, data.lattice_std),
                **self.type_fields(config),
            }
        )
        type_input, type_head = type_network_parts(
            self.fields, net.hidden_dim, net.max_atomic_number
        )
        self.denoiser = CrysBFNDenoiser(
            net.hidden_dim, net.num_layers, net.num_freqs, net.time_dim, type_input, type_head
        )

    @staticmethod
    def type_fields(config: RunConfig) -> dict:
        """DNG: the discrete Bayesian flow on types; CSP: none (``type_vocabulary``)."""
        vocab = type_vocabulary(config, "crysbfn")
        if vocab is None:
            return {}
        flow = DiscreteFlow(config.method.beta1_type, len(vocab))
        return {"atom_types": TypeField(flow, vocab)}

    @classmethod
    def fit_config(cls, config: RunConfig, train_table) -> RunConfig:
        config = super().fit_config(config, train_table)
        if config.data.lattice_std <= 0:
            config = config.replace("data", lattice_std=train_table.lattice_std())
        return config

    def _predict(self, spec, states: dict, time: FlowTime) -> dict:
        """Network outputs by field for the states of theta at ``time``."""
        inputs = {
            **fixed_fields(spec),
            **{k: f.net_input(states[k]) for k, f in self.fields.items()},
        }
        m, u = inputs["frac_coords"]
        t = time.network_t(spec.num_atoms.numel())
        x_hat, lattice_hat, logits = self.denoiser(
            inputs["atom_types"], m, u, t, inputs["lattice"], spec.num_atoms
        )
        return {"frac_coords": x_hat, "lattice": lattice_hat, "atom_types": logits}

    def loss(self, batch: CrystalBatch, generator: torch.Generator | None = None):
        """Discrete-time loss at a random step i of a random N (docs C2-3), summed over fields.

        ``batch`` must be on the model's device and ``generator`` (if given) too: every draw
        happens there, so nothing crosses between host and device inside the step.
        """
        device, cfg = self.device(), self.config.method
        choice = torch.randint(len(cfg.train_steps), (1,), generator=generator, device=device)
        steps = cfg.train_steps[int(choice)]
        step = torch.randint(
            1, steps + 1, (batch.num_crystals,), generator=generator, device=device
        )
        clean = {k: f.clean(batch) for k, f in self.fields.items()}
        centres = clean
        if cfg.rollout_prob > 0:
            centres = self._rollout(batch, clean, step, steps, generator)
        time = FlowTime(step - 1, steps, batch.batch_idx)  # theta_{i-1} has seen i-1 updates
        states = {k: f.noisy(centres[k], time, generator) for k, f in self.fields.items()}
        out = self._predict(batch, states, time)
        losses = {k: f.loss(out[k], clean[k], states[k], time) for k, f in self.fields.items()}
        loss = sum(losses.values())
        metrics = {self.fields[k].loss_name: v.item() for k, v in losses.items()}
        return loss, {"loss": loss.item(), **metrics, "steps": steps}

    @torch.no_grad()
    def _rollout(self, batch, clean: dict, step, steps, generator) -> dict:
        """Flow centres for theta_{i-1} by field: the truth, or for a share ``rollout_prob`` of
        crystals with i >= 2, the model's own prediction at step i-1 from theta_{i-2} drawn
        around the truth. End-back sampling feeds the network draws around its previous
        prediction, never around the truth; this teaches it to correct its own errors of the
        previous step (for generated types: the predicted probabilities, as the sampler uses)."""
        prev = FlowTime((step - 2).clamp_min(0), steps, batch.batch_idx)
        states = {k: f.noisy(clean[k], prev, generator) for k, f in self.fields.items()}
        out = self._predict(batch, states, prev)
        coin = torch.rand(step.shape, generator=generator, device=step.device)
        use = (step >= 2) & (coin < self.config.method.rollout_prob)
        centres = {}
        for k, f in self.fields.items():
            chosen = (use[batch.batch_idx] if f.per_atom else use).view(
                -1, *[1] * (clean[k].dim() - 1)
            )
            centres[k] = torch.where(chosen, f.centre(out[k]), clean[k])
        return centres

    @torch.no_grad()
    def sample(
        self,
        spec: SampleSpec,
        steps: int,
        generator: torch.Generator | None = None,
        **sampler_options,
    ) -> CrystalBatch:
        """End-back sampling with N = ``steps`` network evaluations.

        Fields the model generates start from their prior and are redrawn around each
        prediction; the final prediction decodes them (generated types: a categorical draw from
        the step-N probabilities, docs/methods.md C2, pitfall C8.9). Fields the spec fixes (CSP
        atom types) are kept. Runs on the model's device (``generator``, if given, must live
        there too); the result is returned on the CPU.
        """
        self.sampler_options(**sampler_options)  # end-back has no options; refuses unknown ones
        steps = self.check_steps(steps)
        spec = self.spec_on_device(spec)
        time = FlowTime(0, steps, spec.batch_idx)
        states = {k: f.prior(spec, time, generator) for k, f in self.fields.items()}
        for i in range(1, steps + 1):
            out = self._predict(spec, states, FlowTime(i - 1, steps, spec.batch_idx))
            if i < steps:  # end-back: redraw theta_i from the flow centred on the prediction
                time = FlowTime(i, steps, spec.batch_idx)
                states = {
                    k: f.step(states[k], out[k], time, generator) for k, f in self.fields.items()
                }
        return self.crystals(spec, states, out, time, generator)
