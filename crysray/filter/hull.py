"""Energy above the convex hull, against reference phases chosen by name (``HULLS``).

Every reference works on the Materials Project's energy scale: total energies (eV per cell)
after ``MaterialsProject2020Compatibility``, with the MP elemental entries as the element end
points (crysray.filter.energy). A crystal's corrected energy is placed on pymatgen's
``PhaseDiagram`` of its chemical system (all subsystems included); ``allow_negative=True``
gives a crystal below the reference hull a negative value (a candidate new stable phase).

* ``mp`` (``MPHull``): the Materials Project's own GGA/GGA+U entries (``thermo_type``
  GGA_GGA+U), fetched with mp-api once per run by the driver and cached as one Parquet file
  per chemical system; the actors only read the cache. Same entries, same scheme as the
  Materials Project, so its hull is the Materials Project's.
* ``local`` (``LocalHull``): offline, from every Materials-Project-derived row available
  (crysray.filter.local_hull): each row's DFT formation energy plus the hull point
  E_form - E_hull that its ``e_above_hull`` implies. Much sparser than the Materials Project:
  a crystal whose competing phases are missing looks more stable than it is.

Each result carries the number of reference compounds in the crystal's chemical system, so a
user can tell a well-covered call from a guess.
"""

from __future__ import annotations

import itertools
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
from pymatgen.analysis.phase_diagram import PhaseDiagram
from pymatgen.core import Composition
from pymatgen.entries.computed_entries import ComputedEntry

STABLE_THRESHOLD = 0.1  # eV/atom: "stable" as in MatterGen's S.U.N. metric


def chemsys_of(composition: Composition) -> frozenset[str]:
    return frozenset(el.symbol for el in composition.elements)


def chemsys_name(chemsys) -> str:
    """Materials Project spelling: sorted symbols joined by dashes, e.g. ``Fe-O``."""
    return "-".join(sorted(chemsys))


def subsystems(chemsys) -> list[frozenset[str]]:
    """Every non-empty subset of ``chemsys`` (the phases that compete in its diagram)."""
    symbols = sorted(chemsys)
    return [
        frozenset(s) for k in range(1, len(symbols) + 1) for s in itertools.combinations(symbols, k)
    ]


@dataclass(frozen=True)
class HullPoint:
    e_above_hull: float  # eV/atom; NaN without a reference for every element
    phases: int  # reference compounds (2+ elements) in the chemical system and its subsystems


class HullReference(ABC):
    """Reference phases per chemical system; the funnel asks it for ``e_above_hull`` only."""

    name: str = ""

    def __init__(self) -> None:
        self._diagrams: dict[frozenset[str], tuple[PhaseDiagram | None, int]] = {}

    @abstractmethod
    def entries(self, chemsys: frozenset[str]) -> list[ComputedEntry]:
        """Reference entries of ``chemsys`` and all its subsystems (corrected energies)."""

    @abstractmethod
    def describe(self) -> dict:
        """What this reference is, for manifests (JSON-serialisable)."""

    def diagram(self, chemsys: frozenset[str]) -> tuple[PhaseDiagram | None, int]:
        """(phase diagram or None if an element has no entry, number of compounds), built once."""
        if chemsys not in self._diagrams:
            entries = self.entries(chemsys)
            compounds = {e.entry_id for e in entries if len(e.composition.elements) > 1}
            covered = {el.symbol for e in entries if e.is_element for el in e.composition}
            diagram = PhaseDiagram(entries) if entries and covered >= set(chemsys) else None
            self._diagrams[chemsys] = (diagram, len(compounds))
        return self._diagrams[chemsys]

    def e_above_hull(self, composition: Composition, energy: float) -> HullPoint:
        """Energy above the hull (eV/atom) of a crystal with corrected total ``energy`` (eV)."""
        diagram, phases = self.diagram(chemsys_of(composition))
        if diagram is None or not math.isfinite(energy):
            return HullPoint(float("nan"), phases)
        _, e_hull = diagram.get_decomp_and_e_above_hull(
            ComputedEntry(composition, energy), allow_negative=True, check_stable=False
        )
        return HullPoint(float(e_hull), phases)


class IndexedHull(HullReference):
    """A hull over an in-memory list of entries, indexed by chemical system."""

    def __init__(self, entries: list[ComputedEntry]):
        super().__init__()
        self._by_chemsys: dict[frozenset[str], list[ComputedEntry]] = {}
        for entry in entries:
            self._by_chemsys.setdefault(chemsys_of(entry.composition), []).append(entry)

    def entries(self, chemsys: frozenset[str]) -> list[ComputedEntry]:
        return [e for sub in subsystems(chemsys) for e in self._by_chemsys.get(sub, [])]

    def describe(self) -> dict:
        return {"name": self.name, "entries": sum(map(len, self._by_chemsys.values()))}


def stable_flags(e_above_hull: np.ndarray, threshold: float = STABLE_THRESHOLD) -> np.ndarray:
    """(B,) bool: ``e_above_hull <= threshold``; NaN counts as not stable."""
    with np.errstate(invalid="ignore"):
        return np.asarray(e_above_hull, dtype=np.float64) <= threshold


class ExcludingHull(HullReference):
    """Another hull without some materials, as if they were not known (a rediscovery
    benchmark's targets).

    Drops every entry of the ``material_ids`` (``mp-1``, ``mp-1:hull``, ``mp-1-GGA``) and, with
    them, the hull points other rows imply (ids ending in ``:hull``, crysray.filter.local_hull)
    in every chemical system that contains an excluded material's elements: those points lie on
    a hull that included the excluded material, and would leak its energy.
    """

    def __init__(self, inner: HullReference, material_ids, chemsystems):
        super().__init__()
        self.inner, self.name = inner, inner.name
        self.material_ids = frozenset(material_ids)
        self.chemsystems = [frozenset(c) for c in chemsystems]

    def _dropped(self, entry: ComputedEntry) -> bool:
        base = str(entry.entry_id).split(":")[0]
        if base in self.material_ids or any(base.startswith(m + "-") for m in self.material_ids):
            return True
        implied = str(entry.entry_id).endswith(":hull")
        return implied and any(c <= chemsys_of(entry.composition) for c in self.chemsystems)

    def entries(self, chemsys: frozenset[str]) -> list[ComputedEntry]:
        return [e for e in self.inner.entries(chemsys) if not self._dropped(e)]

    def describe(self) -> dict:
        return {**self.inner.describe(), "excluded_materials": sorted(self.material_ids)}
