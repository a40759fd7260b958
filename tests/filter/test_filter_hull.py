"""Formation energies on the Materials Project's scale and the hull references."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pymatgen.core import Composition, Lattice, Structure
from pymatgen.entries.computed_entries import ComputedEntry

from crysray.data.csv import dataset_path
from crysray.filter.energy import (
    corrected_energy,
    mp_run_parameters,
    require_mp_compatible,
)
from crysray.filter.graphs import single_point_energies
from crysray.filter.hull import IndexedHull, stable_flags
from crysray.filter.local_hull import LocalHull, hull_rows
from crysray.structures import parse_cif


def test_hull_geometry_and_coverage():
    entries = [
        ComputedEntry("Na", -1.0, entry_id="na"),
        ComputedEntry("Cl", -2.0, entry_id="cl"),
        ComputedEntry("NaCl", -1.0 - 2.0 - 4.0, entry_id="nacl"),  # E_form = -2 eV/atom
    ]
    hull = IndexedHull(entries)
    nacl, na2cl = Composition("NaCl"), Composition("Na2Cl")
    assert hull.e_above_hull(nacl, -7.0).e_above_hull == pytest.approx(0.0, abs=1e-9)
    assert hull.e_above_hull(nacl, -6.8).e_above_hull == pytest.approx(0.1)
    # the hull at x_Cl = 1/3 lies on the Na -- NaCl tie line: E_form = -4/3 eV/atom
    na2cl_on_hull = -2.0 - 2.0 + 3 * (-4 / 3)
    assert hull.e_above_hull(na2cl, na2cl_on_hull + 0.3).e_above_hull == pytest.approx(0.1)
    assert hull.e_above_hull(na2cl, na2cl_on_hull - 0.3).e_above_hull == pytest.approx(-0.1)
    assert hull.e_above_hull(nacl, -7.0).phases == 1
    kcl = hull.e_above_hull(Composition("KCl"), -7.0)  # no K entry: no diagram, no guess
    assert np.isnan(kcl.e_above_hull) and kcl.phases == 0
    np.testing.assert_array_equal(
        stable_flags(np.array([0.05, 0.1, 0.2, np.nan])), [True, True, False, False]
    )


def test_mp_run_parameters_follow_the_materials_project_input_set():
    fe2o3 = mp_run_parameters(Composition("Fe2O3"))
    assert fe2o3["run_type"] == "GGA+U" and fe2o3["hubbards"] == {"Fe": 5.3, "O": 0.0}
    assert fe2o3["potcar_symbols"] == ["PBE Fe_pv", "PBE O"]
    assert mp_run_parameters(Composition("FeS"))["run_type"] == "GGA"  # U only with O or F
    assert mp_run_parameters(Composition("CoF2"))["hubbards"]["Co"] == 3.32
    assert mp_run_parameters(Composition("NaCl")) == {
        "run_type": "GGA", "is_hubbard": False, "hubbards": {},
        "potcar_symbols": ["PBE Cl", "PBE Na_pv"],
    }  # fmt: skip


def test_compatibility_applies_the_mp2020_u_and_oxide_corrections():
    fe2o3 = Structure.from_spacegroup(
        "R-3c", Lattice.hexagonal(5.04, 13.75), ["Fe", "O"], [[0, 0, 0.3553], [0.3059, 0, 0.25]]
    )
    n_fe, n_o = fe2o3.composition["Fe"], fe2o3.composition["O"]
    shift = corrected_energy(fe2o3, -100.0) + 100.0
    # MP2020: -2.256 eV per Fe (GGA+U mixing) and -0.687 eV per O (oxide)
    assert shift == pytest.approx(-2.256 * n_fe - 0.687 * n_o, abs=0.01)
    assert np.isnan(corrected_energy(fe2o3, float("nan")))


def test_potentials_on_another_dft_scale_are_refused():
    require_mp_compatible("M3GNet-MP-2021.2.8-PES")
    require_mp_compatible("/some/where/M3GNet-MP-2021.2.8-PES")
    for name in ("TensorNet-MatPES-PBE-v2025.1-PES", "M3GNet-MatPES-PBE-v2025.1-PES", "my-model"):
        with pytest.raises(ValueError, match="Materials-Project-compatible"):
            require_mp_compatible(name)


@pytest.fixture(scope="module")
def mpts_sample():
    """40 MPTS-52 val crystals of at most 20 atoms (a fixed sample, nothing fitted on it)."""
    frame = pd.read_csv(dataset_path("mpts_52", "val")).sample(frac=1.0, random_state=7)
    rows = []
    for row in frame.itertuples(index=False):
        structure = parse_cif(row.cif)
        if len(structure) <= 20:
            rows.append((structure, row.formation_energy_per_atom))
        if len(rows) == 40:
            return rows


def test_formation_energies_through_the_compatibility_scheme_match_dft(
    potential, references, mpts_sample
):
    structures = [s for s, _ in mpts_sample]
    energies = single_point_energies(
        potential,
        np.stack([s.lattice.matrix for s in structures]),
        [s.frac_coords for s in structures],
        [np.array(s.atomic_numbers) for s in structures],
    )
    predicted = np.array([
        references.formation_energy_per_atom(s.composition, corrected_energy(s, e))
        for s, e in zip(structures, energies)
    ])  # fmt: skip
    dft = np.array([e for _, e in mpts_sample])
    assert np.isfinite(predicted).all()
    errors = np.abs(predicted - dft)
    assert errors.mean() < 0.045 and np.median(errors) < 0.03


def test_local_hull_reproduces_each_rows_e_above_hull_from_its_hull_point(tmp_path, references):
    path = dataset_path("mp_20_pilot", "val")
    hull = LocalHull.build([path], cache_dir=tmp_path)
    rows = hull.rows.head(60)
    for row in rows.itertuples(index=False):
        comp = Composition(row.formula)
        total = row.formation_energy_per_atom * comp.num_atoms + sum(
            n * references.energies[el.symbol] for el, n in comp.items()
        )
        point = hull.e_above_hull(comp, total)
        assert point.e_above_hull == pytest.approx(row.e_above_hull, abs=1e-6)
        assert point.phases >= 1
    assert len(list((tmp_path / "hull-local").glob("*.parquet"))) == 1
    left_out = LocalHull.build([path], cache_dir=tmp_path, exclude=set(rows["material_id"]))
    assert len(left_out.rows) == len(hull.rows) - len(rows)


def test_local_rows_read_formulas_from_cifs_and_skip_unreadable_ones(tmp_path):
    frame = pd.read_csv(dataset_path("mpts_52", "val"), nrows=5)
    broken = frame.iloc[[0]].assign(material_id="broken", cif="data_x\n_cell_length_a what\n")
    path = tmp_path / "rows.csv"
    pd.concat([frame, broken, frame.iloc[[1]]]).to_csv(path, index=False)
    rows = hull_rows([path], tmp_path / "cache")
    assert len(rows) == 5 and "broken" not in set(rows["material_id"])
    assert rows["formula"].iloc[0] == parse_cif(frame["cif"].iloc[0]).composition.reduced_formula


@pytest.fixture(scope="module")
def nas(reference_csv):
    """NaS (mp-2400): on the Materials Project hull (DFT e_above_hull = 0)."""
    frame = pd.read_csv(reference_csv)
    row = frame[frame["material_id"] == "mp-2400"].iloc[0]
    assert row["e_above_hull"] == 0.0
    return parse_cif(row["cif"]), row["formation_energy_per_atom"]


def test_known_stable_crystal_sits_on_the_hull_and_a_strained_copy_above(
    potential, hull, references, nas
):
    structure, e_form = nas
    comp = structure.composition
    strained = structure.copy()
    strained.scale_lattice(structure.volume * 1.15)
    energies = single_point_energies(
        potential,
        np.stack([structure.lattice.matrix, strained.lattice.matrix]),
        [structure.frac_coords] * 2,
        [np.array(structure.atomic_numbers)] * 2,
    )
    corrected = [corrected_energy(s, e) for s, e in zip((structure, strained), energies)]
    assert references.formation_energy_per_atom(comp, corrected[0]) == pytest.approx(
        e_form, abs=0.1
    )
    e_hull = [hull.e_above_hull(comp, e).e_above_hull for e in corrected]
    assert abs(e_hull[0]) < 0.1 and e_hull[1] > e_hull[0] + 0.02
    per_atom = (corrected[1] - corrected[0]) / comp.num_atoms
    assert e_hull[1] - e_hull[0] == pytest.approx(per_atom, abs=1e-9)  # the hull is fixed


def test_an_excluded_material_leaves_the_hull_with_the_points_that_would_leak_it():
    from crysray.filter.hull import ExcludingHull

    def entry(formula, energy_per_atom, entry_id):
        c = Composition(formula)
        return ComputedEntry(c, energy_per_atom * c.num_atoms, entry_id=entry_id)

    entries = [
        entry("Li", 0.0, "Li"), entry("O", 0.0, "O"),
        entry("Li2O", -2.0, "mp-1"),  # the ground state to rediscover
        entry("Li2O", -1.8, "mp-9"),  # a known polymorph, kept
        entry("Li2O", -2.0, "mp-9:hull"),  # mp-9's hull point: Li2O's own energy
        entry("LiO", -1.0, "mp-2"),
        entry("Li2NaO", -1.5, "mp-3:hull"),  # implied by a hull that included mp-1
    ]  # fmt: skip
    full = IndexedHull(entries)
    hull = ExcludingHull(full, {"mp-1"}, [frozenset({"Li", "O"})])
    ids = {e.entry_id for e in hull.entries(frozenset({"Li", "O", "Na"}))}
    assert ids == {"Li", "O", "mp-9", "mp-2"}
    li2o = Composition("Li2O")
    assert full.e_above_hull(li2o, -1.8 * 3).e_above_hull == pytest.approx(0.2)
    assert hull.e_above_hull(li2o, -1.8 * 3).e_above_hull == pytest.approx(0.0, abs=1e-9)
    assert hull.describe()["excluded_materials"] == ["mp-1"]
