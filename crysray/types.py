"""The batch type shared by data, networks, methods and samplers, and the sample spec.

Crystals of different sizes are concatenated atom-wise (no padding); ``batch_idx`` maps every
atom to its crystal. Units: lattice in Angstrom with lattice vectors as *rows*, fractional
coordinates in [0, 1), atom types as atomic numbers Z.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch


class _AtomsOfCrystals:
    """Per-crystal atom counts ``num_atoms`` (B,) of atoms concatenated crystal by crystal."""

    num_atoms: torch.Tensor

    @property
    def num_crystals(self) -> int:
        return int(self.num_atoms.shape[0])

    @property
    def batch_idx(self) -> torch.Tensor:
        """(N,) long: index of the crystal each atom belongs to."""
        return torch.repeat_interleave(
            torch.arange(self.num_crystals, device=self.num_atoms.device), self.num_atoms
        )


@dataclass(frozen=True)
class CrystalBatch(_AtomsOfCrystals):
    frac_coords: torch.Tensor  # (N, 3) float, in [0, 1)
    lattice: torch.Tensor  # (B, 3, 3) float, rows are lattice vectors, Angstrom
    atom_types: torch.Tensor  # (N,) long, atomic numbers Z
    num_atoms: torch.Tensor  # (B,) long

    def replace(self, **fields) -> CrystalBatch:
        return dataclasses.replace(self, **fields)

    def to(self, device: torch.device | str) -> CrystalBatch:
        return CrystalBatch(*(getattr(self, f.name).to(device) for f in dataclasses.fields(self)))

    def split(self) -> list[CrystalBatch]:
        """One single-crystal batch per crystal, in order."""
        counts = self.num_atoms.tolist()
        return [
            CrystalBatch(f, self.lattice[b : b + 1], z, self.num_atoms[b : b + 1])
            for b, (f, z) in enumerate(
                zip(self.frac_coords.split(counts), self.atom_types.split(counts))
            )
        ]

    @staticmethod
    def concat(batches: list[CrystalBatch]) -> CrystalBatch:
        return CrystalBatch(
            torch.cat([b.frac_coords for b in batches]),
            torch.cat([b.lattice for b in batches]),
            torch.cat([b.atom_types for b in batches]),
            torch.cat([b.num_atoms for b in batches]),
        )


@dataclass(frozen=True)
class SampleSpec(_AtomsOfCrystals):
    """What to generate: one crystal per entry of ``num_atoms``.

    ``atom_types`` are the fields the task holds fixed: given for crystal structure prediction
    (CSP), None for de novo generation (DNG), where the model generates them. ``conditions``
    holds further per-crystal inputs by name (tensors with B rows) for conditional models. A
    ``CrystalBatch`` can stand in for a spec (its coordinates and lattice are not read).
    """

    num_atoms: torch.Tensor  # (B,) long
    atom_types: torch.Tensor | None = None  # (N,) long, atomic numbers Z; None: generated
    conditions: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)


def segment_mean(values: torch.Tensor, index: torch.Tensor, num_segments: int) -> torch.Tensor:
    """Mean of ``values`` rows grouped by ``index`` (rows of an empty segment are zero)."""
    out = values.new_zeros((num_segments, *values.shape[1:]))
    out.index_add_(0, index, values)
    counts = torch.bincount(index, minlength=num_segments).clamp_min(1).to(values.dtype)
    return out / counts.view(-1, *([1] * (values.dim() - 1)))
