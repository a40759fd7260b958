"""Cell compositions of chemical systems: where a screening campaign starts.

A chemical system (``Li-Mn-O``) becomes every reduced formula of its elements (each element
present; optionally also those of its subsystems) whose cell holds at most ``max_atoms`` atoms,
kept when SMACT finds it plausible (``smact.screening.smact_validity``: a charge-balanced
assignment of SMACT's default oxidation states passing the Pauling electronegativity test,
mixed valence allowed; intermetallics of metals are kept too, SMACT's ``include_alloys``),
each at every cell size Z = 1, 2, ... that fits.

Why these settings: on the 917 DFT ground states of the MP-20 pilot train and val splits,
SMACT's default states keep 91.5% of the formulas, 92.4% with mixed valence (LiMn2O4,
Fe3O4); the ICSD-derived sets keep 89.5-90.8% and pymatgen's structure-predictor states 74.7%
(metal-rich phosphides and nitrides such as Fe2P are not charge-balanced in those). The price:
implausible formulas pass too (GaN3, Li2Fe), and mixed valence makes SMACT slow (about a
minute for Li-Mn-O up to 20 atoms). The count grows quickly with the number of elements and
``max_atoms``, so the whole enumeration is counted before anything is sampled and a request
above ``max_cells`` is refused with its count.
"""

from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import dataclass
from functools import reduce

import numpy as np
from pymatgen.core import Composition, Element

DEFAULT_MAX_CELLS = 100_000


@dataclass(frozen=True)
class CellComposition:
    """One cell to sample: ``Z`` formula units of a reduced formula of a chemical system."""

    chemsys: str  # the requested system, e.g. "Li-Mn-O"
    reduced_formula: str
    z: int
    atomic_numbers: np.ndarray  # (n,) int, elements in the formula's order

    @property
    def cell_formula(self) -> str:
        return (Composition(self.reduced_formula) * self.z).formula.replace(" ", "")


def parse_chemsys(text: str) -> tuple[str, ...]:
    """``"Li-Mn-O"`` -> ``("Li", "Mn", "O")`` (sorted, unique); ValueError names the bad part."""
    parts = [p.strip() for p in text.strip().split("-")]
    if not text.strip() or any(not p for p in parts):
        raise ValueError(f"{text!r} is not a chemical system (elements joined by '-': Li-Mn-O)")
    for p in parts:
        if not Element.is_valid_symbol(p):
            raise ValueError(f"{text!r}: {p!r} is not an element")
    if len(set(parts)) != len(parts):
        raise ValueError(f"{text!r} names an element twice")
    return tuple(sorted(parts, key=lambda s: Element(s).X))


def reduced_formulas(elements: tuple[str, ...], max_atoms: int) -> list[Composition]:
    """Every composition with each element present, integer amounts of gcd 1, at most
    ``max_atoms`` atoms, that SMACT finds plausible."""
    from smact.screening import smact_validity

    out = []
    with warnings.catch_warnings():  # SMACT warns about elements without Pauling data
        warnings.simplefilter("ignore")
        for amounts in _amounts(len(elements), max_atoms):
            if reduce(math.gcd, amounts) != 1:
                continue
            composition = Composition(dict(zip(elements, amounts)))
            if smact_validity(composition, mixed_valence=True):
                out.append(composition)
    return out


def _amounts(n: int, max_atoms: int):
    """All n-tuples of positive integers summing to at most max_atoms."""
    for amounts in itertools.product(range(1, max_atoms - n + 2), repeat=n):
        if sum(amounts) <= max_atoms:
            yield amounts


def cell_compositions(
    chemsys: str,
    max_atoms: int,
    subsystems: bool = False,
    max_cells: int = DEFAULT_MAX_CELLS,
) -> list[CellComposition]:
    """The cells of one chemical system (and, with ``subsystems``, of every subsystem of at
    least two elements), in a fixed order: subsystem, then formula, then Z."""
    elements = parse_chemsys(chemsys)
    if max_atoms < len(elements):
        raise ValueError(f"{chemsys}: --max-atoms {max_atoms} cannot hold one atom of each")
    systems = [elements]
    if subsystems:
        systems = [s for r in range(2, len(elements) + 1)
                   for s in itertools.combinations(elements, r)]  # fmt: skip
    planned = sum(_count_amounts(len(s), max_atoms) for s in systems)
    if planned > 50 * max_cells:  # even before SMACT: the enumeration itself would take hours
        raise ValueError(f"{chemsys}: {planned} candidate formulas up to {max_atoms} atoms; "
                         f"lower --max-atoms or split the system")  # fmt: skip
    cells = []
    for system in systems:
        for composition in reduced_formulas(system, max_atoms):
            size = int(composition.num_atoms)
            numbers = np.array([Element(e).Z for e in system
                                for _ in range(int(composition[e]))])  # fmt: skip
            for z in range(1, max_atoms // size + 1):
                cells.append(CellComposition(chemsys, composition.reduced_formula, z,
                                             np.tile(numbers, z)))  # fmt: skip
                if len(cells) > max_cells:
                    raise ValueError(f"{chemsys}: more than {max_cells} cell compositions up to "
                                     f"{max_atoms} atoms; lower --max-atoms")  # fmt: skip
    return cells


def _count_amounts(n: int, max_atoms: int) -> int:
    """How many n-tuples of positive integers sum to at most max_atoms: C(max_atoms, n)."""
    return math.comb(max_atoms, n)
