"""The base class every generative method derives from (registered in crysray.methods.registry).

What callers rely on, and so what this class fixes:

- a method is an ``nn.Module`` whose ``forward`` is the training loss, so DistributedDataParallel
  sees the loss computed through ``forward`` and syncs gradients;
- ``loss`` returns (scalar tensor, metrics) and the metrics always hold ``"loss"``;
- ``sample(spec, steps, generator, **sampler_options)`` returns crystals on the CPU;
- ``sampler_options`` turns user options into the complete, validated set that a run records
  (manifest and every Parquet row), so two runs with the same record sampled the same way;
- ``fit_config`` fills in statistics of the training split that the model needs at sampling
  (called through crysray.methods.registry.fit_statistics);
- the generated fields are processes in ``self.fields`` (crysray.methods.fields); the task
  only decides which are there.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from crysray.config import RunConfig
from crysray.methods.fields import fixed_fields
from crysray.types import CrystalBatch, SampleSpec


class GenerativeMethod(nn.Module, ABC):
    fields: nn.ModuleDict  # field name -> FieldProcess, for the fields the model generates
    name: ClassVar[str]
    default_steps: ClassVar[int]  # what a user gets without choosing
    # sampler name -> its options with defaults; the first sampler is the default one
    samplers: ClassVar[dict[str, dict]]

    def __init__(self, config: RunConfig):
        super().__init__()
        if config.method.name != self.name:
            raise ValueError(f"{type(self).__name__} built with a {config.method.name!r} config")
        self.config = config

    def forward(self, batch: CrystalBatch, generator: torch.Generator | None = None):
        """The training loss; ``forward`` so that DistributedDataParallel syncs gradients."""
        loss, metrics = self.loss(batch, generator)
        if "loss" not in metrics:
            raise RuntimeError(f"{self.name}.loss must report metrics['loss']")
        return loss, metrics

    @abstractmethod
    def loss(self, batch: CrystalBatch, generator: torch.Generator | None = None):
        """Training loss of a batch on the model's device -> (scalar loss, dict of metrics)."""

    @abstractmethod
    def sample(
        self,
        spec: SampleSpec,
        steps: int,
        generator: torch.Generator | None = None,
        **sampler_options,
    ) -> CrystalBatch:
        """Generate crystals with ``steps`` sampler steps: one per ``spec.num_atoms`` entry,
        with the spec's fixed fields (CSP: its atom types). The result is on the CPU."""

    @classmethod
    def fit_config(cls, config: RunConfig, train_table) -> RunConfig:
        """Fill in what the model needs from the training split (a ``CrystalTable``); methods
        extend it. For de novo generation: the atom types and the atom-count distribution."""
        if config.method.task != "dng" or config.data.atom_types:
            return config
        counts = np.bincount(np.asarray(train_table.num_atoms))
        types = np.unique(np.asarray(train_table.atom_types))
        return config.replace(
            "data",
            atom_types=tuple(int(z) for z in types),
            num_atoms_counts=tuple(int(c) for c in counts),
        )

    @classmethod
    def sampler_options(cls, sampler: str | None = None, **options) -> dict:
        """The complete options of one sampler: ``{"sampler": name, **defaults, **options}``."""
        name = sampler or next(iter(cls.samplers))
        if name not in cls.samplers:
            raise ValueError(
                f"{cls.name} has no sampler {name!r}; choose from {', '.join(cls.samplers)}"
            )
        defaults = cls.samplers[name]
        unknown = sorted(set(options) - set(defaults))
        if unknown:
            known = ", ".join(defaults) or "none"
            raise ValueError(
                f"{cls.name} sampler {name!r} has no option {', '.join(unknown)} (options: {known})"
            )
        resolved = {"sampler": name}
        for key, default in defaults.items():
            value = options.get(key, default)
            try:
                resolved[key] = type(default)(value)
            except (TypeError, ValueError):
                raise ValueError(
                    f"{cls.name} sampler option {key}: cannot use {value!r} as "
                    f"{type(default).__name__}"
                ) from None
        return resolved

    def spec_on_device(self, spec: SampleSpec) -> SampleSpec:
        """``spec`` (or a CrystalBatch standing in for one) on the model's device; refuses a spec
        that leaves out a field the model does not generate (CSP: the atom types)."""
        device = self.device()
        atom_types = spec.atom_types
        missing = [k for k, v in fixed_fields(spec).items() if v is None and k not in self.fields]
        if missing:
            raise ValueError(
                f"{self.name} ({self.config.method.task}) is given, not generating, the "
                f"fields {', '.join(missing)}: the sample spec must hold them"
            )
        conditions = getattr(spec, "conditions", {})
        return SampleSpec(
            spec.num_atoms.to(device),
            None if atom_types is None else atom_types.to(device),
            {k: v.to(device) for k, v in conditions.items()},
        )

    def crystals(self, spec: SampleSpec, states: dict, out: dict, time, generator=None):
        """The sampled crystals (a CrystalBatch on the CPU): each generated field decoded from
        its last state and network output (in ``self.fields`` order), the fixed ones taken from
        ``spec``."""
        decoded = {k: f.decode(states[k], out[k], time, generator) for k, f in self.fields.items()}
        fields = {**fixed_fields(spec), **decoded, "num_atoms": spec.num_atoms}
        return CrystalBatch(**{k: v.cpu() for k, v in fields.items()})

    def network_evaluations(self, steps: int, **sampler_options) -> int:
        """Network evaluations per crystal of one ``sample`` call (one per step unless a
        sampler says otherwise)."""
        self.sampler_options(**sampler_options)
        return self.check_steps(steps)

    def device(self) -> torch.device:
        return next(self.parameters()).device

    @staticmethod
    def check_steps(steps) -> int:
        if int(steps) != steps or steps < 1:
            raise ValueError(f"number of steps must be an integer >= 1, got {steps!r}")
        return int(steps)
