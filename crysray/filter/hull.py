"""Energy above the convex hull of generated crystals, against a reference set of known ones.

Choice of reference (why it looks like this):

* MatGL total energies and DFT energies are on different scales (different elemental
  offsets, model error), so a generated crystal's MatGL energy cannot be put on a DFT hull
  directly. We map MatGL energies to DFT *formation* energies with per-element reference
  energies ``mu_el`` (eV/atom), fitted by least squares over the reference crystals::

      E_matgl / N - sum_el x_el * mu_el  ~=  E_form^DFT / N        (x_el: atom fractions)

  Only the elemental offsets are fitted, not the model: for M3GNet-MP-2021.2.8-PES this gives
  ~0.07 eV/atom MAE on held-out MP-20 crystals (../shared/matgl/README.md).
* The hull itself is built from the reference crystals' DFT formation energies (the better
  numbers) plus a zero-energy entry per element, with pymatgen's ``PhaseDiagram`` in
  formation-energy space. A generated crystal is placed on it with its *predicted* formation
  energy ``E_matgl/N - sum x mu``. Its e_above_hull therefore carries the model error of one
  crystal only, not of every competing phase.
* ``PhaseDiagram`` cannot span ~90 elements, so one diagram is built per chemical system
  (the elements of the query; every reference entry whose elements are a subset) and cached.
* ``allow_negative=True``: a crystal predicted below the reference hull gets a negative value
  (a candidate new stable phase) instead of an exception. Compositions with an element that
  has no fitted ``mu`` get NaN and status "no_reference".
* Default reference data (crysray.filter.reference.DEFAULT_DATASETS): the MP-20 crystals
  available offline that are not in the MP-20 test split, i.e. pilot train + pilot val +
  the binary/ternary part of MP-20 val, 8344 distinct crystals with DFT
  ``formation_energy_per_atom``. Measured on the first 200 pilot test crystals: formation
  energy MAE 0.074 eV/atom with mu fitted on pilot train alone, 0.067 with the default set,
  and a denser hull (median DFT e_above_hull of the test crystals on it -0.10 instead of
  -0.57 eV/atom). It is still much sparser than the Materials Project hull (~150k entries),
  so e_above_hull values are lower bounds of what the full MP hull gives. A Materials
  Project hull (mp-api) plugs into the same seam, the ``HullReference`` protocol.
* Reference energies are single points on the DFT structures (``relax_steps=0``): relaxing
  the test crystals before evaluating them changes the MAE by < 1 meV/atom (0.0671 vs
  0.0673; the relaxed energies are ~4 meV/atom lower on average), and single points cost
  ~100 s for the 8344 crystals on one CPU thread instead of about an hour (estimated).

``build_reference`` caches the fitted reference (entries and mu) as Parquet, keyed by the
sha256 of the dataset files, the model name and the energy protocol.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
from pymatgen.core import Composition

STABLE_THRESHOLD = 0.1  # eV/atom: "stable" as in MatterGen's S.U.N. metric


class HullReference(Protocol):
    """What the funnel needs from a hull; a Materials Project (mp-api) hull implements it too."""

    model: str  # the potential the formation energies are calibrated for

    def covers(self, composition: Composition) -> bool:
        """True if every element of ``composition`` has a reference energy."""

    def formation_energy_per_atom(self, composition: Composition, energy_per_atom: float) -> float:
        """Formation energy (eV/atom) from a MatGL total energy per atom (eV/atom)."""

    def e_above_hull(self, composition: Composition, formation_energy_per_atom: float) -> float:
        """Energy above the reference hull (eV/atom), negative if below it."""


@dataclass
class LinearHullReference:
    """Hull from DFT formation energies of reference crystals + per-element MatGL offsets.

    Attributes:
        mu: element symbol -> reference energy on the MatGL scale, eV/atom.
        formulas: (M,) reduced formulas of the reference crystals.
        formation_energy: (M,) their DFT formation energies, eV/atom.
        model: name of the potential ``mu`` was fitted for.
    """

    mu: dict[str, float]
    formulas: list[str]
    formation_energy: np.ndarray
    model: str
    _diagrams: dict = field(default_factory=dict, repr=False)
    _by_chemsys: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for formula, ef in zip(self.formulas, self.formation_energy):
            comp = Composition(formula)
            entry = PDEntry(comp, float(ef) * comp.num_atoms, name=formula)
            self._by_chemsys.setdefault(_chemsys(comp), []).append(entry)

    def covers(self, composition: Composition) -> bool:
        return all(el.symbol in self.mu for el in composition.elements)

    def formation_energy_per_atom(self, composition: Composition, energy_per_atom: float) -> float:
        if not self.covers(composition):
            return float("nan")
        frac = composition.fractional_composition
        return float(energy_per_atom - sum(frac[el] * self.mu[el.symbol] for el in frac.elements))

    def e_above_hull(self, composition: Composition, formation_energy_per_atom: float) -> float:
        if not (self.covers(composition) and np.isfinite(formation_energy_per_atom)):
            return float("nan")
        diagram = self.diagram(_chemsys(composition))
        query = PDEntry(composition, formation_energy_per_atom * composition.num_atoms)
        _, e_hull = diagram.get_decomp_and_e_above_hull(
            query, allow_negative=True, check_stable=False
        )
        return float(e_hull)

    def diagram(self, chemsys: frozenset[str]) -> PhaseDiagram:
        """Phase diagram (formation energies) of one chemical system, built once."""
        if chemsys not in self._diagrams:
            entries = [PDEntry(Composition(el), 0.0, name=el) for el in sorted(chemsys)]
            for k in range(1, len(chemsys) + 1):
                for subset in itertools.combinations(sorted(chemsys), k):
                    entries += self._by_chemsys.get(frozenset(subset), [])
            self._diagrams[chemsys] = PhaseDiagram(entries)
        return self._diagrams[chemsys]


def _chemsys(composition: Composition) -> frozenset[str]:
    return frozenset(el.symbol for el in composition.elements)


def fit_element_energies(
    compositions: list[Composition],
    energy_per_atom: np.ndarray,
    formation_energy: np.ndarray,
    ridge: float = 1e-6,
) -> dict[str, float]:
    """Least-squares ``mu`` with ``energy_per_atom - X @ mu ~= formation_energy``.

    Args:
        compositions: M compositions; X holds their atom fractions, (M, n_elements).
        energy_per_atom: (M,) MatGL energies, eV/atom (NaN rows are skipped).
        formation_energy: (M,) DFT formation energies, eV/atom.
        ridge: a tiny pull towards a prior (the fraction-weighted mean of the targets over the
            crystals holding each element); it only decides directions the data leave free,
            e.g. two elements that always occur together in the same ratio.

    Returns:
        element symbol -> mu (eV/atom) for every element of a usable composition.
    """
    keep = np.isfinite(energy_per_atom) & np.isfinite(formation_energy)
    comps = [c.fractional_composition for c, k in zip(compositions, keep) if k]
    elements = sorted({el.symbol for c in comps for el in c.elements})
    column = {el: j for j, el in enumerate(elements)}
    x = np.zeros((len(comps), len(elements)))
    for i, comp in enumerate(comps):
        for el, amount in comp.items():
            x[i, column[el.symbol]] = amount
    target = energy_per_atom[keep] - formation_energy[keep]
    prior = (x * target[:, None]).sum(0) / x.sum(0)
    lam = np.sqrt(ridge * len(target))
    system = np.vstack([x, lam * np.eye(len(elements))])
    rhs = np.concatenate([target - x @ prior, np.zeros(len(elements))])
    delta = np.linalg.lstsq(system, rhs, rcond=None)[0]
    return {el: float(prior[j] + delta[j]) for el, j in column.items()}


def stable_flags(e_above_hull: np.ndarray, threshold: float = STABLE_THRESHOLD) -> np.ndarray:
    """(B,) bool: ``e_above_hull <= threshold``; NaN counts as not stable."""
    with np.errstate(invalid="ignore"):
        return np.asarray(e_above_hull) <= threshold
