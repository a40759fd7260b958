"""DNG metrics on crystals whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from crysray.data.csv import dataset_path, load_split
from crysray.eval.dng import (
    coverage,
    cutoffs_for,
    dng_metrics,
    fingerprints,
    reference_fingerprints,
)
from crysray.filter.uniqueness import TrainingSet


@pytest.fixture(scope="module")
def perovskites():
    table = load_split(dataset_path("perov_5", "test")).subset(range(12))
    return table, table.structures()


def test_the_test_split_covers_itself_and_metrics_see_broken_crystals(perovskites):
    table, crystals = perovskites
    squashed = crystals[0].copy()
    squashed.replace(1, squashed[1].species, squashed[0].frac_coords + 0.01)  # 2 atoms overlap
    charged = Structure(Lattice.cubic(4.0), ["Na", "Na"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    charged.replace(1, "Cl")  # NaCl: valid; then NaCl2 is not charge balanced
    charged.append("Cl", [0.25, 0.25, 0.25])
    generated = [*crystals[:10], squashed, charged, None]
    m = dng_metrics(generated, crystals[:10], TrainingSet.from_table(table.subset(range(5))),
                    "perov_5")  # fmt: skip
    assert m["n"] == 13
    assert m["structure_validity"] == pytest.approx(11 / 13)  # squashed and None fail
    assert not bool(np.isnan(m["wdist_density"]))
    assert m["composition_validity"] < m["structure_validity"] + 1 / 13
    assert m["cov_recall"] == 1.0  # every reference crystal is generated exactly
    assert m["cov_precision"] == pytest.approx(10 / 13)  # the 3 odd ones cover nothing
    assert m["uniqueness"] == 1.0
    assert m["novelty"] == pytest.approx(5 / 10, abs=0.11)  # crystals 0-4 are "training"


def test_coverage_counts_cutoffs_in_both_spaces():
    ref_s, ref_c = np.zeros((2, 3)), np.zeros((2, 132))
    ref_s[1] = 1.0
    gen_s, gen_c = np.zeros((1, 3)), np.zeros((1, 132))
    recall, precision = coverage(gen_s, gen_c, ref_s, ref_c, (0.2, 4.0), num_generated=4)
    assert recall == 0.5 and precision == 0.25


def test_cutoffs_follow_cdvae_per_dataset():
    assert cutoffs_for("perov_5") == (0.2, 4.0) and cutoffs_for("mp_20_pilot") == (0.4, 10.0)


def test_fingerprints_skip_missing_cells(perovskites):
    _, crystals = perovskites
    s, c, kept = fingerprints([None, crystals[0], None])
    assert s.shape == (1, 61) and c.shape == (1, 132) and kept.tolist() == [1]


def test_reference_fingerprints_are_cached_by_content(perovskites):
    _, crystals = perovskites
    first = reference_fingerprints(crystals[:3])
    again = reference_fingerprints(crystals[:3])  # from the cache
    direct = fingerprints(crystals[:3])
    for a, b, c in zip(first, again, direct[:2]):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(a, c)
    other = reference_fingerprints(crystals[3:5])  # other crystals: not the cached answer
    assert other[0].shape == (2, 61) and not np.allclose(other[0][:1], first[0][:1])
