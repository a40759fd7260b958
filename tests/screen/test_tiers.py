"""The tiered funnel on real crystals with the real potential: duplicates merged before any
relaxation, the pre-relaxation cut, nothing dropped, counts that add up."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from crystals import cesium_chloride_type, rock_salt, rotated_supercell
from pymatgen.core import Lattice, Structure

from crysray.data.dataset import CrystalTable
from crysray.filter.config import FunnelConfig
from crysray.screen.config import ScreenConfig
from crysray.screen.known import KnownMaterials
from crysray.screen.tiers import TIERS, Models, screen_formula, tier_counts

FUNNEL = FunnelConfig(hull="local", relax_steps=300)


def sample_rows(structures: list[Structure]) -> pa.Table:
    """Rows of the sample schema's structure columns, ids s0, s1, ..."""
    return pa.table({
        "sample_id": [f"s{i}" for i in range(len(structures))],
        "formula": [s.composition.reduced_formula for s in structures],
        "atomic_numbers": pa.array([list(s.atomic_numbers) for s in structures],
                                   pa.list_(pa.int16())),
        "frac_coords": [s.frac_coords.reshape(-1).tolist() for s in structures],
        "lattice": [s.lattice.matrix.reshape(-1).tolist() for s in structures],
    })  # fmt: skip


def nacl_samples() -> list[Structure]:
    salt = rock_salt(5.6).get_primitive_structure()
    overlapping = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.01, 0, 0]])
    return [salt, salt.copy(), rotated_supercell(salt), cesium_chloride_type(3.3), overlapping]


@pytest.fixture(scope="module")
def models(potential, small_hull, references):
    return Models(potential, small_hull, references)


def test_duplicates_are_merged_before_any_relaxation_and_no_row_is_dropped(models):
    rows = sample_rows(nacl_samples())
    seconds = {}
    out = screen_formula(rows, ScreenConfig(prerelax_steps=5), FUNNEL, models, seconds)

    assert out["sample_id"].to_pylist() == rows["sample_id"].to_pylist()
    tiers = out["tier"].to_pylist()
    assert set(tiers) <= set(TIERS)
    assert tiers[1:3] == ["duplicate", "duplicate"]  # the copy and the doubled, sheared cell
    assert out["duplicate_of"].to_pylist()[1:3] == ["s0", "s0"]
    assert tiers[4] == "structure"
    # only the two distinct structures were pre-relaxed, and relaxed fully
    assert [e is not None for e in out["prerelax_energy_per_atom"].to_pylist()] == [
        True, False, False, True, False]  # fmt: skip
    counts = tier_counts(out)
    assert counts["prerelaxations"] == 2 and counts["full_relaxations"] == 2
    assert sum(counts["removed"].values()) == counts["rows"] == 5
    assert counts["fire_steps"] == sum(s or 0 for s in out["relax_steps_taken"].to_pylist())
    assert set(seconds) >= {"duplicate", "prerelax", "relax"}

    # rock salt is NaCl's ground state: below CsCl-type, far below the elements
    assert tiers[0] == "candidate" and out["relax_status"][0].as_py() == "converged"
    e_hull = out["e_above_hull"].to_pylist()
    assert e_hull[0] < 0.0 and out["stable"][0].as_py()
    if tiers[3] == "candidate":
        assert e_hull[3] > e_hull[0]
    assert out["formation_energy_per_atom"][0].as_py() == pytest.approx(-2.1, abs=0.25)


def test_the_prerelaxation_cut_keeps_the_lowest_of_a_composition(models):
    # two structures StructureMatcher tells apart: rock salt and a squeezed CsCl-type cell
    rows = sample_rows([rock_salt(5.6).get_primitive_structure(), cesium_chloride_type(2.9)])
    kept_one = screen_formula(rows, ScreenConfig(prerelax_steps=3, prerelax_keep=1), FUNNEL,
                              models)  # fmt: skip
    tiers = kept_one["tier"].to_pylist()
    assert sorted(tiers) == ["candidate", "prerelax_energy"]
    energies = kept_one["prerelax_energy_per_atom"].to_pylist()
    assert energies[tiers.index("prerelax_energy")] > energies[tiers.index("candidate")]
    assert kept_one["relax_status"][tiers.index("prerelax_energy")].as_py() is None

    window = screen_formula(rows, ScreenConfig(prerelax_steps=3, prerelax_window=0.0), FUNNEL,
                            models)  # fmt: skip
    assert window["tier"].to_pylist() == tiers

    # nothing above the hull cut is relaxed: with a cut below every candidate, none is
    nothing = screen_formula(rows, ScreenConfig(prerelax_steps=3, prerelax_hull_cut=0.0),
                             FUNNEL, models)  # fmt: skip
    pre_hull = nothing["prerelax_e_above_hull"].to_pylist()
    for tier, e in zip(nothing["tier"].to_pylist(), pre_hull):
        if tier == "prerelax_hull":
            assert e > 0.0
        elif e is not None and e > 0.0:
            assert tier == "prerelax_energy"


def test_a_candidate_matching_a_known_material_is_named_not_novel(potential, small_hull,
                                                                  references):  # fmt: skip
    salt = rock_salt(5.64)
    known = KnownMaterials([CrystalTable.from_arrays(
        ["mp-22862"], [salt.lattice.matrix], [salt.frac_coords],
        [np.array(salt.atomic_numbers)])])  # fmt: skip
    models = Models(potential, small_hull, references, known)
    rows = sample_rows([rock_salt(5.5).get_primitive_structure(), cesium_chloride_type(3.3)])
    out = screen_formula(rows, ScreenConfig(prerelax_steps=5), FUNNEL, models)
    assert out["tier"][0].as_py() == "candidate"
    assert out["known_id"][0].as_py() == "mp-22862" and not out["novel"][0].as_py()
    if out["tier"][1].as_py() == "candidate":  # CsCl-type NaCl is not rock salt
        assert out["known_id"][1].as_py() is None and out["novel"][1].as_py()
