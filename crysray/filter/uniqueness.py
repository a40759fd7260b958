"""Uniqueness within a set and novelty against the training set, with StructureMatcher.

Two crystals can only match if they have the same reduced formula, so every comparison is
made inside a group of equal reduced formula: the cost is (group size) x (distinct structures
in the group) matcher calls, near linear for generated sets where formulas spread out.
Matcher settings are pymatgen's defaults (ltol 0.2, stol 0.3, angle_tol 5 degrees), as in the
CDVAE / DiffCSP / MatterGen evaluations.

A row without a usable structure (None) is neither unique nor novel.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Structure

from crysray.filter.composition import composition_of
from crysray.structures import arrays_to_structure


def default_matcher() -> StructureMatcher:
    return StructureMatcher()


def uniqueness(
    structures: list[Structure | None],
    sample_ids: list[str],
    matcher: StructureMatcher | None = None,
) -> tuple[np.ndarray, list[str | None]]:
    """First occurrences are unique; a later match points to the first one's sample_id.

    Returns:
        unique: (B,) bool.
        duplicate_of: B entries, the sample_id of the earlier row it matches, else None.
    """
    matcher = matcher or default_matcher()
    unique = np.zeros(len(structures), dtype=bool)
    duplicate_of: list[str | None] = [None] * len(structures)
    representatives: dict[str, list[int]] = defaultdict(list)  # formula -> unique rows
    reduced = [prepare_for_matching(matcher, s) for s in structures]
    for i, s in enumerate(structures):
        if s is None:
            continue
        group = representatives[s.composition.reduced_formula]
        match = next((j for j in group if prepared_fit(matcher, reduced[j], reduced[i])), None)
        if match is None:
            group.append(i)
            unique[i] = True
        else:
            duplicate_of[i] = sample_ids[match]
    return unique, duplicate_of


class TrainingSet:
    """Known crystals grouped by reduced formula; Structures are built per formula on demand.

    Args:
        lattices: (M, 3, 3) A; fracs: M arrays (n, 3); numbers: M arrays (n,) of Z.
        (``CrystalTable`` holds exactly these: see ``from_table``.)
    """

    def __init__(self, lattices, fracs, numbers):
        self._rows = (lattices, fracs, numbers)
        self._by_formula: dict[str, list[int]] = defaultdict(list)
        for m, z in enumerate(numbers):
            self._by_formula[composition_of(z).reduced_formula].append(m)
        self._structures: dict[str, list[Structure]] = {}

    @classmethod
    def from_table(cls, table) -> TrainingSet:
        """From a ``crysray.data.dataset.CrystalTable`` (e.g. ``load_split(train)``)."""
        fracs = np.split(table.frac_coords, table.offsets[1:-1])
        return cls(table.lattice, fracs, table.compositions())

    def __len__(self) -> int:
        return len(self._rows[2])

    def structures_with_formula(self, formula: str) -> list[Structure]:
        if formula not in self._structures:
            lattices, fracs, numbers = self._rows
            self._structures[formula] = [
                arrays_to_structure(lattices[m], fracs[m], numbers[m])
                for m in self._by_formula.get(formula, [])
            ]
        return self._structures[formula]


def novelty(
    structures: list[Structure | None],
    training: TrainingSet,
    matcher: StructureMatcher | None = None,
) -> np.ndarray:
    """(B,) bool: True when no training crystal of the same reduced formula matches."""
    matcher = matcher or default_matcher()
    novel = np.zeros(len(structures), dtype=bool)
    for i, s in enumerate(structures):
        if s is not None:
            known = training.structures_with_formula(s.composition.reduced_formula)
            novel[i] = not any(structures_fit(matcher, k, s) for k in known)
    return novel


def prepare_for_matching(matcher: StructureMatcher, s: Structure | None) -> Structure | None:
    """``s`` reduced (primitive, Niggli) as ``matcher.fit`` reduces both structures on every
    call: done once per structure, as pymatgen's own ``group_structures`` does, it makes
    pairwise matching about 2.5x faster. None when ``s`` is None or cannot be reduced (odd
    cells can break the reduction: such a structure matches nothing)."""
    if s is None:
        return None
    try:
        return matcher._get_reduced_structure(s, matcher._primitive_cell, niggli=True)
    except Exception:  # noqa: BLE001 - see structures_fit
        return None


def prepared_fit(matcher: StructureMatcher, a: Structure | None, b: Structure | None) -> bool:
    """``matcher.fit`` of two ``prepare_for_matching`` results (False if either is None)."""
    if a is None or b is None:
        return False
    try:
        return bool(matcher.fit(a, b, skip_structure_reduction=True))
    except Exception:  # noqa: BLE001 - see structures_fit
        return False


def structures_fit(matcher: StructureMatcher, a: Structure, b: Structure) -> bool:
    try:
        return bool(matcher.fit(a, b))
    except Exception:  # noqa: BLE001 - odd cells can break the lattice search; no match then
        return False
