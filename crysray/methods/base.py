"""The interface every generative method implements."""

from __future__ import annotations

from typing import Protocol

import torch

from crysray.types import CrystalBatch


class GenerativeMethod(Protocol):
    name: str

    def loss(self, batch: CrystalBatch, generator: torch.Generator | None = None):
        """Training loss of a batch -> (scalar loss, dict of float metrics)."""

    def sample(
        self, spec: CrystalBatch, steps: int, generator: torch.Generator | None = None
    ) -> CrystalBatch:
        """Generate crystals. For CSP ``spec`` gives atom_types and num_atoms; its coordinates
        and lattice are ignored."""
