"""crysray.eval: struct validity and CSP match rate / RMSE."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from crystals import perovskite
from pymatgen.core import Lattice, Structure

from crysray.data.csv import dataset_path
from crysray.eval.csp import MATCHER, STOL, close_atoms_share, match_rate_rmse, tightness
from crysray.structures import (
    canonical_structure,
    min_interatomic_distance,
    parse_cif,
    structure_validity,
)


def _structures(name: str, split: str, n: int) -> list[Structure]:
    cifs = pd.read_csv(dataset_path(name, split), nrows=n)["cif"]
    return [canonical_structure(parse_cif(c)) for c in cifs]


@pytest.fixture(scope="module")
def perovskites() -> list[Structure]:
    return _structures("perov_5", "val", 6)


def _perturbed(s: Structure, shift: float, stretch: float = 1.0, seed: int = 0) -> Structure:
    """Copy of ``s`` with frac coords moved by up to ``shift`` and the c axis scaled."""
    rng = np.random.default_rng(seed)
    matrix = s.lattice.matrix.copy()
    matrix[2] *= stretch
    frac = s.frac_coords + rng.uniform(-shift, shift, size=s.frac_coords.shape)
    return Structure(Lattice(matrix), s.species, frac)


# ---- validity ----------------------------------------------------------------------------


def test_dataset_perovskite_is_valid(perovskites):
    for s in perovskites:
        assert structure_validity(s.lattice.matrix, s.frac_coords)


@pytest.mark.parametrize(
    ("lattice", "frac"),
    [
        (4 * np.eye(3), [[0, 0, 0], [0.01, 0, 0]]),  # overlapping atoms
        (4 * np.eye(3), [[0.001, 0.5, 0.5], [0.999, 0.5, 0.5]]),  # overlap across the boundary
        (np.full((3, 3), np.nan), [[0, 0, 0]]),  # NaN lattice
        (4 * np.eye(3), [[np.nan, 0, 0], [0.5, 0.5, 0.5]]),  # NaN coordinate
        (np.diag([4.0, 4.0, np.inf]), [[0, 0, 0]]),
        (np.diag([4.0, 4.0, 0.0]), [[0, 0, 0]]),  # zero lattice vector
        ([[1, 0, 0], [0, 1, 0], [1, 1, 0]], [[0, 0, 0]]),  # coplanar vectors: zero volume
        (0.4 * np.eye(3), [[0, 0, 0]]),  # volume 0.064 A^3 < 0.1
        (np.diag([0.4, 5.0, 5.0]), [[0.2, 0.3, 0.4]]),  # one atom 0.4 A from its own image
        (np.eye(2), [[0, 0]]),  # wrong shapes
        (4 * np.eye(3), np.zeros((0, 3))),  # no atoms
        (4 * np.eye(3), [["a", "b", "c"]]),
    ],
)
def test_invalid_crystals_are_rejected_without_raising(lattice, frac):
    assert structure_validity(lattice, frac) is False


def test_single_atom_counts_lattice_translations():
    assert structure_validity(np.diag([3.0, 4.0, 5.0]), [[0.5, 0.5, 0.5]])
    d = min_interatomic_distance(np.diag([3.0, 4.0, 5.0]), np.array([[0.5, 0.5, 0.5]]))
    assert d == pytest.approx(3.0)


def test_min_distance_agrees_with_pymatgen():
    for s in _structures("mp_20_pilot", "val", 10):
        if len(s) < 2:
            continue
        dm = s.distance_matrix + np.diag(np.full(len(s), np.inf))
        # In a Niggli cell the shortest lattice vector is a.
        expected = min(dm.min(), min(s.lattice.abc))
        assert min_interatomic_distance(s.lattice.matrix, s.frac_coords) == pytest.approx(expected)


# ---- CSP metrics -------------------------------------------------------------------------


def test_identical_structures_match_with_zero_rmse(perovskites):
    result = match_rate_rmse([[s] for s in perovskites], perovskites, workers=2)
    assert result["match_rate"] == 1.0 and result["match_rate_at_k"] == 1.0
    assert result["rmse"] < 1e-6 and result["rmse_at_k"] < 1e-6
    assert (result["k"], result["n"]) == (1, len(perovskites))


def test_strongly_perturbed_structure_does_not_match(perovskites):
    target = perovskites[0]
    wrong = _perturbed(target, shift=0.25, stretch=2.0)
    assert structure_validity(wrong.lattice.matrix, wrong.frac_coords)
    result = match_rate_rmse([[wrong]], [target], workers=1)
    assert result["match_rate"] == 0.0 and math.isnan(result["rmse"])


def test_none_and_missing_candidates_count_as_unmatched(perovskites):
    preds = [[None], [], [perovskites[2]], None]
    result = match_rate_rmse(preds, perovskites[:4], workers=1)
    assert result["match_rate"] == 0.25 and result["match_rate_at_k"] == 0.25
    assert result["n"] == 4


def test_invalid_prediction_does_not_count_even_if_matcher_agrees(perovskites):
    target = perovskites[1]
    # Volume scaled by 1e-6: the matcher normalises volume away, struct validity does not.
    tiny = Structure(Lattice(target.lattice.matrix * 0.01), target.species, target.frac_coords)
    assert MATCHER.fit(tiny, target)
    assert match_rate_rmse([[tiny]], [target], workers=1)["match_rate"] == 0.0


def test_at_k_takes_the_best_candidate(perovskites):
    a, b = perovskites[:2]
    wrong_a = _perturbed(a, shift=0.25, stretch=2.0)
    close_b = _perturbed(b, shift=0.02, seed=1)
    preds = [[wrong_a, a], [close_b, b, None]]
    result = match_rate_rmse(preds, [a, b], workers=2)
    assert result["k"] == 3
    assert result["match_rate"] == 0.5  # only b's first candidate matches
    assert result["match_rate_at_k"] == 1.0
    single = match_rate_rmse([[close_b]], [b], workers=1)
    assert result["rmse"] == pytest.approx(single["rmse"]) and single["rmse"] > 1e-3
    assert result["rmse_at_k"] < 1e-6  # exact copies win over the perturbed candidate


def test_pool_and_single_process_agree(perovskites):
    preds = [[_perturbed(s, shift=0.03, seed=i)] for i, s in enumerate(perovskites)]
    pooled = match_rate_rmse(preds, perovskites, workers=2)
    serial = match_rate_rmse(preds, perovskites, workers=1)
    assert pooled == pytest.approx(serial, nan_ok=True)


def test_length_mismatch_raises(perovskites):
    with pytest.raises(ValueError, match="prediction lists"):
        match_rate_rmse([[perovskites[0]]], perovskites[:2])


# ---- tightness metrics -------------------------------------------------------------------


def test_tightness_counts_unmatched_at_stol():
    out = tightness([0.01, 0.07, None, 0.2])
    assert out["tight_0.05"] == 0.25 and out["tight_0.1"] == 0.5
    assert out["rmse_all"] == pytest.approx((0.01 + 0.07 + 0.5 + 0.2) / 4)
    assert out["rmse_median"] == pytest.approx(0.07)
    assert STOL == 0.5
    with pytest.raises(ValueError):
        tightness([])


def test_close_atoms_share_on_hand_built_structures():
    fine = perovskite()
    # two O atoms 0.3 A apart
    clash = Structure(Lattice.cubic(4.0), ["O", "O", "Ti"], [[0, 0, 0], [0.075, 0, 0], [0.5] * 3])
    # an atom 0.2 A from the periodic image of another, across the cell boundary
    wrapped = Structure(Lattice.cubic(4.0), ["O", "O"], [[0.01, 0.5, 0.5], [0.96, 0.5, 0.5]])
    assert close_atoms_share([fine, clash, wrapped, None]) == 0.5
    assert close_atoms_share([fine]) == 0.0


def test_tight_and_loose_matches_separate():
    target = perovskite()
    tight, loose = perovskite(shift_o=0.005), perovskite(shift_o=0.2)
    clash = Structure(
        target.lattice,
        target.species,
        [[0, 0, 0], [0.5, 0.5, 0.5], [0.05, 0, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
    )
    rms_tight = MATCHER.get_rms_dist(tight, target)[0]
    rms_loose = MATCHER.get_rms_dist(loose, target)[0]
    assert rms_tight < 0.05 and 0.1 < rms_loose < STOL
    result = match_rate_rmse([[target], [tight], [loose], [clash]], [target] * 4, workers=1)
    assert result["match_rate"] == 0.75  # the clash is not struct-valid
    assert result["tight_0.05"] == 0.5 and result["tight_0.1"] == 0.5
    assert result["rmse"] == pytest.approx((0 + rms_tight + rms_loose) / 3, abs=1e-9)
    assert result["rmse_all"] == pytest.approx((0 + rms_tight + rms_loose + STOL) / 4, abs=1e-9)
    assert result["close_atoms_share"] == 0.25
