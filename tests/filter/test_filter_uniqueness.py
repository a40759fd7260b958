"""crysray.filter.uniqueness: StructureMatcher uniqueness and novelty, grouped by formula."""

from __future__ import annotations

import numpy as np
from crystals import arrays, cesium_chloride_type, rock_salt, rotated_supercell

from crysray.filter.uniqueness import TrainingSet, novelty, uniqueness


def test_duplicates_point_to_the_first_occurrence():
    nacl = rock_salt(5.69)
    structures = [nacl, None, cesium_chloride_type(3.4), rotated_supercell(nacl), rock_salt(5.75)]
    unique, duplicate_of = uniqueness(structures, ["a", "b", "c", "d", "e"])
    np.testing.assert_array_equal(unique, [True, False, True, False, False])
    assert duplicate_of == [None, None, None, "a", "a"]  # matcher scales volumes


def test_novelty_against_training_set():
    training = TrainingSet(*arrays([rock_salt(5.69), cesium_chloride_type(4.2, ["K", "Br"])]))
    assert len(training) == 2
    queries = [
        rock_salt(5.8),
        cesium_chloride_type(3.4),
        None,
        cesium_chloride_type(4.2, ["K", "Cl"]),
    ]
    np.testing.assert_array_equal(novelty(queries, training), [False, True, False, True])
