"""Random structure search baselines: the requested atoms, reproducible, physically spaced."""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from crysray.sample.random_search import (
    compatible_space_groups,
    pyxtal_candidates,
    random_cell_candidates,
)

pytest.importorskip("pyxtal")
FE2O3 = np.array([26, 26, 26, 26, 8, 8, 8, 8, 8, 8])


def test_compatible_groups_follow_wyckoff_multiplicities():
    one_atom = compatible_space_groups(np.array([29]))
    # a 1-fold site per primitive cell: P1 and Fm-3m (4a, 4 per conventional F cell) have one,
    # P2_1 (screw axis: only the 2-fold general position) does not
    assert {1, 225} <= set(one_atom) and 4 not in one_atom
    groups = compatible_space_groups(np.array([26, 26, 8, 8, 8]))
    assert {1, 2} <= set(groups)  # P-1: 3 O = one 2-fold + one 1-fold site
    assert 4 not in groups  # P2_1: only 2-fold positions, 3 O impossible


def test_pyxtal_candidates_have_exactly_the_cell_and_the_drawn_symmetry():
    a = pyxtal_candidates(FE2O3, 4, np.random.default_rng(5))
    b = pyxtal_candidates(FE2O3, 4, np.random.default_rng(5))
    assert all(s is not None for s in a)
    for s, t in zip(a, b):
        assert sorted(s.atomic_numbers) == sorted(FE2O3.tolist())
        assert np.allclose(s.lattice.matrix, t.lattice.matrix)  # the seed fixes the draws
        assert s.volume / len(s) > 5.0  # a composition-based density, not a collapsed cell
        assert s.distance_matrix[np.triu_indices(len(s), 1)].min() > 0.5  # PyXtal's own limits
    assert len({SpacegroupAnalyzer(s, symprec=0.01).get_space_group_number() for s in a}) >= 2


def test_random_cells_keep_the_minimum_separation():
    cells = random_cell_candidates(FE2O3, 6, np.random.default_rng(0))
    assert sum(c is not None for c in cells) >= 5
    for c in filter(None, cells):
        assert sorted(c.atomic_numbers) == sorted(FE2O3.tolist())
        d = c.distance_matrix
        np.fill_diagonal(d, np.inf)
        assert d.min() >= 0.7 * 2 * 0.66 - 1e-9  # O-O: 0.7 x the sum of covalent radii (0.66 A)
    again = random_cell_candidates(FE2O3, 6, np.random.default_rng(0))
    assert all(np.allclose(x.frac_coords, y.frac_coords) for x, y in zip(filter(None, cells),
                                                                          filter(None, again)))
