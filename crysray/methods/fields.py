"""Per-field processes: how a method noises, scores and generates one field of a crystal.

A method holds one process per generated field in an ``nn.ModuleDict`` keyed by CrystalBatch
field names (``frac_coords``, ``lattice`` and, for de novo generation, ``atom_types``); a field
the task gives (CSP atom types) has no process and is read from the ``SampleSpec``. So the
task is decided once, by which processes a method builds, and loss and samplers loop over
the dict without knowing the task.

``time`` arguments are whatever the method's clock is (CrysBFN: ``FlowTime``, the number of
Bayesian updates seen; KLDM: ``Clock``, the diffusion time tau and sampler step); a process
reads from it the shapes it needs (per atom or per crystal). The order of the dict is the
order in which processes draw from the generator, so it is part of what a seed reproduces.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn

from crysray.config import RunConfig
from crysray.types import CrystalBatch, SampleSpec


class FieldProcess(nn.Module, ABC):
    """One generated field. ``out`` is the network's output for the field; a ``state`` is what
    the process carries between steps (the network's input is read from it)."""

    per_atom: bool = True  # (N, ...) tensors; False for per-crystal fields such as the lattice
    loss_name: str  # the field's loss in training metrics ("coord_loss", ...)

    @abstractmethod
    def clean(self, batch: CrystalBatch) -> torch.Tensor:
        """The field of a data batch, in the process's own space (angles, normalised...)."""

    @abstractmethod
    def noisy(self, clean: torch.Tensor, time, generator=None):
        """A training state of the field at ``time`` around ``clean``."""

    @abstractmethod
    def loss(self, out, clean: torch.Tensor, state, time) -> torch.Tensor:
        """Scalar training loss of the network output ``out`` against ``clean``."""

    @abstractmethod
    def prior(self, spec: SampleSpec, time, generator=None):
        """The sampler's starting state for the crystals of ``spec``."""

    @abstractmethod
    def step(self, state, out, time, generator=None):
        """One sampler step from ``state`` with the network output ``out``."""

    @abstractmethod
    def decode(self, state, out, time, generator=None) -> torch.Tensor:
        """The final field in CrystalBatch units from the last state and network output."""

    def net_input(self, state):
        """What the network reads of a state (the state itself unless a process says more)."""
        return state


class TypeVocabulary(nn.Module):
    """The K atomic numbers a de novo model generates (``data.atom_types``), as buffers that
    follow the model to its device; rebuilt from the config, so not stored in checkpoints."""

    def __init__(self, atom_types: tuple[int, ...], max_atomic_number: int):
        super().__init__()
        vocab = torch.tensor(atom_types, dtype=torch.long)
        size = max(max_atomic_number, int(vocab.max())) + 1
        index = torch.full((size,), -1)
        index[vocab] = torch.arange(len(vocab))
        self.register_buffer("type_vocab", vocab, persistent=False)  # index -> Z
        self.register_buffer("type_index", index, persistent=False)  # Z -> index, -1 outside

    def __len__(self) -> int:
        return len(self.type_vocab)

    def indices(self, atom_types: torch.Tensor) -> torch.Tensor:
        """Atomic numbers (N,) -> vocabulary indices; refuses types the model cannot generate."""
        index = self.type_index[atom_types.clamp(0, len(self.type_index) - 1)]
        if bool((index < 0).any()):  # one host sync per batch, only for DNG training
            raise ValueError("dng: the batch holds atom types outside data.atom_types")
        return index

    def atomic_numbers(self, index: torch.Tensor) -> torch.Tensor:
        return self.type_vocab[index]


def fixed_fields(spec: SampleSpec) -> dict:
    """The fields a spec holds fixed, by process name; a generated field replaces its entry."""
    return {"atom_types": spec.atom_types}


def type_vocabulary(config: RunConfig, method: str) -> TypeVocabulary | None:
    """The task decides, here and only here: None for CSP (the types are given), the training
    split's types for DNG (the method generates them)."""
    task, atom_types = config.method.task, config.data.atom_types
    if task == "csp":
        return None
    if task != "dng":
        raise ValueError(f"{method}: unknown task {task!r} (csp or dng)")
    if not atom_types:
        raise ValueError(f"{method} dng: data.atom_types must be set from the training split")
    return TypeVocabulary(atom_types, config.net.max_atomic_number)


def type_network_parts(fields: nn.ModuleDict, hidden_dim: int, max_atomic_number: int):
    """(type input layer, type output head or None) of a method's network: a generated type
    field brings its own (beliefs or noisy types in, logits out); given types are embedded."""
    if "atom_types" in fields:
        field = fields["atom_types"]
        return field.input_layer(hidden_dim), field.head(hidden_dim)
    return nn.Embedding(max_atomic_number + 1, hidden_dim), None
