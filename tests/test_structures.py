"""crysray.structures: CIF parsing, canonical cells, Structure <-> CrystalBatch."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Lattice, Structure
from scipy.spatial.transform import Rotation

from crysray.data.csv import dataset_path
from crysray.structures import (
    arrays_to_structure,
    batch_to_structures,
    canonical_structure,
    parse_cif,
    structures_to_batch,
    wrap_frac,
)


def _cifs(name: str, split: str, n: int) -> list[str]:
    return pd.read_csv(dataset_path(name, split), nrows=n)["cif"].tolist()


@pytest.fixture(scope="module")
def perov_cif() -> str:
    return _cifs("perov_5", "val", 1)[0]


@pytest.fixture(scope="module")
def mixed_structures() -> list[Structure]:
    """Cubic-ish perovskites plus general MP-20 cells (up to 20 atoms, all lattice systems)."""
    cifs = _cifs("perov_5", "val", 6) + _cifs("mp_20_pilot", "val", 10)
    return [parse_cif(c) for c in cifs]


def test_round_trip_structure_batch_structure(mixed_structures):
    canonical = [canonical_structure(s) for s in mixed_structures]
    batch = structures_to_batch(canonical)
    assert batch.frac_coords.dtype == batch.lattice.dtype == torch.float32
    assert batch.num_atoms.tolist() == [len(s) for s in canonical]
    back = batch_to_structures(batch)
    matcher = StructureMatcher()
    for before, after in zip(canonical, back, strict=True):
        assert matcher.fit(before, after)
        assert after.atomic_numbers == before.atomic_numbers
        np.testing.assert_allclose(after.frac_coords, before.frac_coords, atol=1e-6)
        np.testing.assert_allclose(after.lattice.matrix, before.lattice.matrix, atol=1e-5)


def test_canonical_is_invariant_to_cartesian_rotation(mixed_structures):
    rotations = Rotation.random(len(mixed_structures), random_state=0).as_matrix()
    for s, rot in zip(mixed_structures, rotations, strict=True):
        rotated = Structure(Lattice(s.lattice.matrix @ rot.T), s.species, s.frac_coords)
        a, b = canonical_structure(s), canonical_structure(rotated)
        np.testing.assert_allclose(a.lattice.matrix, b.lattice.matrix, atol=1e-6)
        assert StructureMatcher().fit(a, b)


@pytest.mark.parametrize(
    "basis_change",
    [
        [[1, 1, 0], [0, 1, 0], [0, 0, 1]],
        [[0, 1, 0], [0, 0, 1], [1, 0, 0]],
        [[1, 0, 0], [1, 1, 0], [-1, 0, 1]],
        [[-1, 0, 0], [0, 1, 0], [0, 2, -1]],
    ],
)
def test_canonical_is_invariant_to_unimodular_basis_change(mixed_structures, basis_change):
    m = np.array(basis_change, dtype=np.float64)
    assert abs(abs(np.linalg.det(m)) - 1) < 1e-12  # same cell volume: no supercell
    for s in mixed_structures:
        # New basis rows m @ L; Cartesian positions unchanged, so frac' = frac @ inv(m).
        other = Structure(
            Lattice(m @ s.lattice.matrix), s.species, s.frac_coords @ np.linalg.inv(m)
        )
        a, b = canonical_structure(s), canonical_structure(other)
        np.testing.assert_allclose(a.lattice.matrix, b.lattice.matrix, atol=1e-6)
        assert StructureMatcher().fit(a, b)


def test_canonical_fixes_orientation(mixed_structures):
    for s in mixed_structures:
        c = canonical_structure(s)
        expected = Lattice.from_parameters(*c.lattice.parameters).matrix
        np.testing.assert_allclose(c.lattice.matrix, expected, atol=1e-12)
        assert c.lattice.volume == pytest.approx(s.lattice.volume, rel=1e-8)


def test_frac_coords_are_wrapped_into_unit_interval():
    frac = np.array([[-1e-17, 1.0, 2.25], [-0.25, 0.999999999, 3.0], [0.5, -1e-300, -2.0]])
    wrapped = wrap_frac(frac)
    assert np.all((wrapped >= 0.0) & (wrapped < 1.0))
    assert wrapped[0, 0] == 0.0  # np.mod(-1e-17, 1) == 1.0 in float64
    s = Structure(Lattice.cubic(6.0), ["Na", "Cl", "Cl"], frac)
    c = canonical_structure(s)
    assert np.all((c.frac_coords >= 0.0) & (c.frac_coords < 1.0))


def test_arrays_to_structure():
    s = arrays_to_structure(4.0 * np.eye(3), np.array([[0, 0, 0], [0.5, 0.5, 0.5]]), [55, 17])
    assert s.composition.reduced_formula == "CsCl"
    assert s.lattice.volume == pytest.approx(64.0)


def test_parse_cif_accepts_dataset_cif(perov_cif):
    s = parse_cif(perov_cif)
    assert len(s) == 5 and s.is_ordered


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda c: "data_nothing\nthis is not a cif\n", "unparseable CIF"),
        (lambda c: "", "missing cif"),
        (lambda c: c.replace("_cell_length_a   4.27928426", "_cell_length_a   0.0"), "bad volume"),
        (lambda c: c.replace("Cu  Cu0", "Xx  Xx0"), "unknown element"),
        (
            lambda c: c.replace("0.50000000  0.50000000  1\n", "0.50000000  0.50000000  0.5\n", 1),
            "disordered sites",
        ),
    ],
)
def test_parse_cif_rejects_bad_input(perov_cif, edit, reason):
    with pytest.raises(ValueError, match=f"^{reason}"):
        parse_cif(edit(perov_cif))


def test_right_angle_niggli_ambiguity_is_resolved():
    # beta = 89.9 in one basis is beta = 90.1 in the basis (-a, -b, c); with alpha = gamma = 90
    # both are valid Niggli cells, so the canonical form must pick one.
    s = Structure(
        Lattice.from_parameters(5.0, 6.0, 7.0, 90.0, 89.9, 90.0),
        ["Na", "Cl"],
        [[0.1, 0.2, 0.3], [0.6, 0.7, 0.8]],
    )
    flip = np.array([-1.0, -1.0, 1.0])
    other = Structure(Lattice(s.lattice.matrix * flip[:, None]), s.species, s.frac_coords * flip)
    assert other.lattice.angles[1] == pytest.approx(90.1)
    a, b = canonical_structure(s), canonical_structure(other)
    np.testing.assert_allclose(a.lattice.matrix, b.lattice.matrix, atol=1e-6)
    assert a.lattice.angles[1] == pytest.approx(90.1)  # the all-obtuse choice
    assert StructureMatcher().fit(a, b)


def _rows(lattices, fracs, numbers, **extra):
    import pyarrow as pa

    columns = {
        "sample_id": [f"0-0-{i}" for i in range(len(numbers))],
        "formula": ["X"] * len(numbers),
        "atomic_numbers": pa.array(numbers, pa.list_(pa.int16())),
        "frac_coords": pa.array(fracs, pa.list_(pa.float64())),
        "lattice": pa.array(lattices, pa.list_(pa.float64())),
    }
    return pa.table({**columns, **extra})


def test_codec_rows_arrays_structures_round_trip():
    """Row -> arrays -> Structure keeps every number; malformed rows are None, not errors."""
    from crysray.structures import row_arrays, rows_to_structures

    rock_salt = [0.0, 0, 0, 0.5, 0.5, 0.5]
    cubic = list(np.diag([4.0, 4.0, 4.0]).reshape(-1))
    table = _rows(
        [cubic, cubic, cubic, [0.0] * 9, None, cubic],
        [rock_salt, rock_salt[:3], rock_salt, rock_salt, rock_salt, [0.0, 0, 0, 0.02, 0, 0]],
        [[11, 17], [11, 17], [0, 17], [11, 17], [11, 17], [8, 8]],
    )
    structures = rows_to_structures(table)
    assert structures[0].composition.reduced_formula == "NaCl"
    np.testing.assert_array_equal(structures[0].frac_coords, np.reshape(rock_salt, (2, 3)))
    np.testing.assert_array_equal(structures[0].lattice.matrix, np.diag([4.0] * 3))
    # wrong length, Z = 0, singular lattice, null lattice: not buildable
    assert structures[1:5] == [None] * 4
    assert row_arrays(table.slice(1, 1).to_pylist()[0]) is None
    # buildable but not struct-valid (0.08 A apart): built, unless only valid rows are asked for
    assert structures[5] is not None
    assert rows_to_structures(table, valid_only=True)[5] is None
    assert rows_to_structures(table, valid_only=True)[0] is not None


def test_codec_validity_rule_is_the_sample_rows_rule(tiny_checkpoint, formulas_file):
    """valid_structure written by the sampler == the codec's rule on the same rows."""
    from crysray.sample.compositions import read_compositions
    from crysray.sample.sampler import CrystalSampler
    from crysray.structures import arrays_valid, table_arrays

    table = CrystalSampler(str(tiny_checkpoint), steps=2, threads=1).sample_unit(
        0, 0, read_compositions(formulas_file)
    )
    assert [arrays_valid(a) for a in table_arrays(table)] == table["valid_structure"].to_pylist()


def test_write_structures_takes_the_relaxed_cell_when_the_funnel_ran(tmp_path):
    """Funnel rows write their relaxed crystals, named by sample_id and formula; rows that were
    not relaxed are left out."""
    import pyarrow as pa

    from crysray.sample.schema import write_structures

    rock_salt = [0.0, 0, 0, 0.5, 0.5, 0.5]
    table = _rows(
        [list(np.diag([4.0] * 3).reshape(-1))] * 2, [rock_salt] * 2, [[11, 17], [11, 17]],
        relaxed_lattice=pa.array([list(np.diag([5.6] * 3).reshape(-1)), None],
                                 pa.list_(pa.float64())),
        relaxed_frac_coords=pa.array([rock_salt, None], pa.list_(pa.float64())),
    )  # fmt: skip
    table = table.set_column(1, "formula", pa.array(["NaCl", "NaCl"]))
    assert write_structures(table, tmp_path / "relaxed") == 1
    written = Structure.from_file(tmp_path / "relaxed" / "0-0-0_NaCl.cif")
    assert written.lattice.a == pytest.approx(5.6)
    assert write_structures(table, tmp_path / "raw", relaxed=False) == 2
    assert Structure.from_file(tmp_path / "raw" / "0-0-1_NaCl.cif").lattice.a == pytest.approx(4.0)


def test_dft_inputs_are_the_materials_projects_relaxation_of_the_relaxed_cell(tmp_path):
    """fmt="vasp": MPRelaxSet inputs per relaxed row, POTCAR.spec instead of POTCAR files, MP's
    U value on Fe in an oxide."""
    import pyarrow as pa

    from crysray.sample.schema import write_structures

    rock_salt = [0.0, 0, 0, 0.5, 0.5, 0.5]
    cell = list(np.diag([4.3] * 3).reshape(-1))
    lists = pa.list_(pa.float64())
    table = _rows([cell] * 2, [rock_salt] * 2, [[26, 8], [11, 17]],
                  relaxed_lattice=pa.array([cell, None], lists),
                  relaxed_frac_coords=pa.array([rock_salt, None], lists))  # fmt: skip
    table = table.set_column(1, "formula", pa.array(["FeO", "NaCl"]))
    assert write_structures(table, tmp_path / "dft", fmt="vasp") == 1
    folder = tmp_path / "dft" / "0-0-0_FeO"
    assert sorted(p.name for p in folder.iterdir()) == ["INCAR", "KPOINTS", "POSCAR",
                                                         "POTCAR.spec"]  # fmt: skip
    assert (folder / "POTCAR.spec").read_text().split() == ["Fe_pv", "O"]
    incar = dict(line.split(" = ") for line in (folder / "INCAR").read_text().splitlines())
    assert incar["LDAU"] == "True" and incar["LDAUU"].split() == ["5.3", "0"]
    assert Structure.from_file(folder / "POSCAR").lattice.a == pytest.approx(4.3)
