"""crysray.filter.hull and reference: mu fit, hull geometry, cache, known and strained crystals."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import REFERENCE_ROWS
from pymatgen.core import Composition

from crysray.filter.graphs import single_point_energies
from crysray.filter.hull import LinearHullReference, fit_element_energies, stable_flags
from crysray.filter.reference import build_reference, reference_entries


def test_fit_recovers_element_energies():
    rng = np.random.default_rng(0)
    mu_true = {"Na": -1.3, "Cl": -1.8, "O": -4.9, "Fe": -8.2}
    symbols = list(mu_true)
    comps = [
        Composition({el: int(k) for el, k in zip(symbols, rng.integers(0, 4, 4)) if k})
        for _ in range(30)
    ]
    comps = [c for c in comps if c.num_atoms]
    formation = rng.normal(-1.0, 0.5, len(comps))
    energy = np.array(
        [
            ef + sum(c.get_atomic_fraction(el) * mu_true[el] for el in symbols)
            for c, ef in zip(comps, formation)
        ]
    )
    mu = fit_element_energies(comps, energy, formation)
    assert set(mu) == set(mu_true)
    for el, value in mu_true.items():
        assert abs(mu[el] - value) < 1e-4


def test_hull_geometry_in_formation_energy_space():
    reference = LinearHullReference(
        mu={"Na": -1.0, "Cl": -2.0},
        formulas=["NaCl"],
        formation_energy=np.array([-2.0]),
        model="test",
    )
    nacl, na2cl = Composition("NaCl"), Composition("Na2Cl")
    assert reference.e_above_hull(nacl, -2.0) == pytest.approx(0.0, abs=1e-9)
    assert reference.e_above_hull(nacl, -1.9) == pytest.approx(0.1)
    # Hull at x_Cl = 1/3 lies on the Na -- NaCl tie line: -2.0 * (1/3) / (1/2) = -4/3.
    assert reference.e_above_hull(na2cl, -1.0) == pytest.approx(1 / 3)
    assert reference.e_above_hull(na2cl, -1.5) == pytest.approx(-1 / 6)  # below: negative
    assert reference.formation_energy_per_atom(nacl, -3.5) == pytest.approx(-3.5 + 1.5)
    kcl = Composition("KCl")
    assert not reference.covers(kcl) and np.isnan(reference.e_above_hull(kcl, -2.0))
    assert np.isnan(reference.formation_energy_per_atom(kcl, -3.0))
    np.testing.assert_array_equal(
        stable_flags(np.array([0.05, 0.1, 0.2, np.nan])), [True, True, False, False]
    )


def test_reference_is_cached_as_parquet(potential, reference, reference_csv, reference_cache):
    folders = list((reference_cache / "hull-reference").iterdir())
    assert len(folders) == 1 and folders[0].name.startswith("M3GNet-MP-2021.2.8-PES-sp-")
    entries = pq.read_table(folders[0] / "entries.parquet").to_pandas()
    mu = pq.read_table(folders[0] / "mu.parquet").to_pandas()
    assert len(entries) == REFERENCE_ROWS and np.isfinite(entries["matgl_energy_per_atom"]).all()
    assert set(mu["element"]) == set(reference.mu) and (mu["n_entries"] >= 1).all()
    again = build_reference(potential, reference_csv, cache_dir=reference_cache)
    assert again.mu == pytest.approx(reference.mu, abs=1e-12)
    # The fit maps MatGL energies onto DFT formation energies of the reference crystals.
    predicted = entries["matgl_energy_per_atom"] - [
        sum(
            Composition(f).get_atomic_fraction(el) * reference.mu[el.symbol]
            for el in Composition(f)
        )
        for f in entries["formula"]
    ]
    assert np.abs(predicted - entries["formation_energy_per_atom"]).mean() < 0.08


@pytest.fixture(scope="module")
def nas(reference_csv):
    """NaS (mp-2400): on the Materials Project hull (DFT e_above_hull = 0), in the reference."""
    frame = reference_entries(reference_csv, reference_csv.read_bytes())
    row = frame[frame["material_id"] == "mp-2400"].iloc[0]
    assert row["e_above_hull"] == 0.0
    return row


def test_known_stable_crystal_sits_on_the_hull(potential, reference, nas):
    comp = Composition(nas["formula"])
    e_dft = reference.e_above_hull(comp, nas["formation_energy_per_atom"])
    assert abs(e_dft) < 0.02
    energy = (
        single_point_energies(
            potential, nas["lattice"][None], [nas["frac_coords"]], [nas["atomic_numbers"]]
        )[0]
        / nas["num_atoms"]
    )
    ef_pred = reference.formation_energy_per_atom(comp, energy)
    e_pred = reference.e_above_hull(comp, ef_pred)
    # The hull does not depend on the query, so e_above_hull moves 1:1 with the energy ...
    assert e_pred - e_dft == pytest.approx(ef_pred - nas["formation_energy_per_atom"], abs=1e-9)
    # ... and the MatGL error on this crystal is small.
    assert abs(e_pred) < 0.1


def test_strained_copy_is_above_the_hull(potential, reference, nas):
    comp = Composition(nas["formula"])
    lattices = np.stack([nas["lattice"], nas["lattice"] * 1.15 ** (1 / 3)])  # +15 % volume
    energies = (
        single_point_energies(
            potential, lattices, [nas["frac_coords"]] * 2, [nas["atomic_numbers"]] * 2
        )
        / nas["num_atoms"]
    )
    e_hull = [
        reference.e_above_hull(comp, reference.formation_energy_per_atom(comp, e)) for e in energies
    ]
    assert e_hull[1] > 0.02 and e_hull[1] > e_hull[0]
    assert e_hull[1] - e_hull[0] == pytest.approx(energies[1] - energies[0], abs=1e-9)


def test_reference_skips_unparsable_rows_and_duplicates(tmp_path, potential, reference_csv):
    frame = pd.read_csv(reference_csv, nrows=3)
    broken = frame.iloc[[0]].assign(material_id="broken", cif="data_x\n_cell_length_a what\n")
    path = tmp_path / "dup.csv"
    pd.concat([frame, broken, frame.iloc[[1]]]).to_csv(path, index=False)
    built = build_reference(potential, [path, path], cache_dir=tmp_path / "cache")
    assert len(built.formulas) == 3
