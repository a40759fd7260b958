"""crysray.filter.uniqueness: StructureMatcher uniqueness and novelty, grouped by formula."""

from __future__ import annotations

import numpy as np
from filter_helpers import rock_salt
from pymatgen.core import Lattice, Structure

from crysray.filter.uniqueness import TrainingSet, novelty, uniqueness


def cesium_chloride_type_nacl() -> Structure:
    return Structure(Lattice.cubic(3.4), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def test_duplicates_point_to_the_first_occurrence():
    nacl = rock_salt(5.69)
    rotated_supercell = nacl.copy()
    rotated_supercell.make_supercell([[1, 1, 0], [0, 1, 0], [0, 0, 2]])
    structures = [nacl, None, cesium_chloride_type_nacl(), rotated_supercell, rock_salt(5.75)]
    unique, duplicate_of = uniqueness(structures, ["a", "b", "c", "d", "e"])
    np.testing.assert_array_equal(unique, [True, False, True, False, False])
    assert duplicate_of == [None, None, None, "a", "a"]  # matcher scales volumes


def test_novelty_against_training_set():
    train = [
        rock_salt(5.69),
        Structure(Lattice.cubic(4.2), ["K", "Br"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
    ]
    training = TrainingSet(
        np.stack([s.lattice.matrix for s in train]),
        [s.frac_coords for s in train],
        [np.array(s.atomic_numbers) for s in train],
    )
    assert len(training) == 2
    queries = [
        rock_salt(5.8),
        cesium_chloride_type_nacl(),
        None,
        Structure(Lattice.cubic(4.2), ["K", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
    ]
    np.testing.assert_array_equal(novelty(queries, training), [False, True, False, True])
