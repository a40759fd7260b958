"""Chemical systems to cell compositions (SMACT-screened), counted and bounded."""

from __future__ import annotations

import pytest
from pymatgen.core import Composition

from crysray.sample.chemspace import cell_compositions, parse_chemsys


def test_a_system_gives_every_plausible_formula_at_every_cell_size_that_fits():
    cells = cell_compositions("Ga-N", 4)
    assert [(c.reduced_formula, c.z) for c in cells][:2] == [("GaN", 1), ("GaN", 2)]
    for c in cells:
        assert len(c.atomic_numbers) <= 4 and set(c.atomic_numbers.tolist()) == {7, 31}
        assert c.chemsys == "Ga-N"
    assert cells[1].cell_formula == "Ga2N2"


def test_subsystems_and_mixed_valence():
    formulas = {c.reduced_formula for c in cell_compositions("Li-Fe-O", 7, subsystems=True)}
    assert {"LiFeO2", "Fe2O3", "Li2O", "FeO"} <= formulas  # ternary and binary subsystems
    assert "Fe3O4" in formulas  # mixed valence (Fe2+ Fe3+2)
    assert all(len(Composition(f).elements) >= 2 for f in formulas)  # no elements alone


@pytest.mark.parametrize("text, message", [("Li-Xx-O", "'Xx' is not an element"),
                                           ("Li--O", "not a chemical system"),
                                           ("Li-O-Li", "twice")])  # fmt: skip
def test_bad_systems_are_named(text, message):
    with pytest.raises(ValueError, match=message):
        parse_chemsys(text)


def test_an_exploding_enumeration_is_refused_with_its_count():
    with pytest.raises(ValueError, match=r"more than 10 cell compositions"):
        cell_compositions("Ga-N", 20, max_cells=10)
    with pytest.raises(ValueError, match=r"\d+ candidate formulas up to 60 atoms"):
        cell_compositions("Li-Na-K-Fe-Co-Ni-O", 60, max_cells=1000)
