"""What a campaign generates, unit by unit: compositions (CSP) or atom counts (DNG).

A ``Targets`` object turns the sample range of a work unit into the targets the sampler batches
into a ``SampleSpec``: ``Composition`` (atom types given) or ``AtomCount`` (types generated).
Both kinds are deterministic functions of (run seed, unit), so a retried or resumed unit
regenerates the same rows; ``digest`` identifies the targets in the manifest.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from crysray.sample.sampler import AtomCount, Composition, Target


class Targets(ABC):
    kind: str  # recorded in the manifest: "compositions" or "atom_counts"

    @abstractmethod
    def digest(self) -> str:
        """Short hash of everything that decides the unit specs."""

    @abstractmethod
    def for_unit(self, start: int, stop: int, seed: int, unit: int) -> list[Target]:
        """Targets of samples [start, stop) of work unit ``unit``."""

    def known_compositions(self) -> Iterable[Composition]:
        """Compositions known before sampling (what a hull can be prepared for); none for DNG.

        May be an iterator over a long list (crysray.sample.composition_store): iterate once.
        """
        return []


@dataclass(frozen=True)
class CompositionTargets(Targets):
    """CSP: sample k is composition k mod len(compositions), all held in memory (campaigns
    use crysray.sample.composition_store.StoredCompositions, with the same digest and rows)."""

    compositions: list[Composition]
    kind = "compositions"

    def digest(self) -> str:
        h = hashlib.sha256()
        for c in self.compositions:
            z = np.asarray(c.atomic_numbers, dtype=np.int64).tobytes()
            h.update(c.source_id.encode() + b"\0" + z + b"\n")
        return h.hexdigest()[:16]

    def known_compositions(self) -> list[Composition]:
        return self.compositions

    def for_unit(self, start: int, stop: int, seed: int, unit: int) -> list[Composition]:
        n = len(self.compositions)
        return [self.compositions[k % n] for k in range(start, stop)]


@dataclass(frozen=True)
class AtomCountTargets(Targets):
    """DNG: atom counts drawn i.i.d. from ``counts`` (entry n: weight of n-atom cells), with a
    generator seeded by (run seed, unit); atom types are left to the model."""

    counts: tuple[int, ...]
    kind = "atom_counts"

    def __post_init__(self):
        weights = np.asarray(self.counts, dtype=np.float64)
        if weights.ndim != 1 or len(weights) < 2 or (weights < 0).any() or weights[1:].sum() <= 0:
            raise ValueError("atom-count distribution needs a positive weight for some n >= 1")
        if weights[0] > 0:
            raise ValueError("atom-count distribution gives weight to empty cells (n = 0)")

    @staticmethod
    def fixed(num_atoms: int) -> AtomCountTargets:
        if num_atoms < 1:
            raise ValueError(f"number of atoms must be >= 1, got {num_atoms}")
        return AtomCountTargets(tuple([0] * num_atoms + [1]))

    def digest(self) -> str:
        return hashlib.sha256(repr(tuple(int(c) for c in self.counts)).encode()).hexdigest()[:16]

    def for_unit(self, start: int, stop: int, seed: int, unit: int) -> list[AtomCount]:
        p = np.asarray(self.counts, dtype=np.float64)
        # a stream separate from the unit's torch generator (which draws the crystals)
        rng = np.random.default_rng([seed, unit, 0x646E67])
        sizes = rng.choice(len(p), size=stop - start, p=p / p.sum())
        return [AtomCount(int(n)) for n in sizes]
