"""crysray.eval.run_dng.sun_rate: the S.U.N. share through the real funnel (MatGL, local hull)."""

from __future__ import annotations

import pyarrow as pa
import pytest
from crystals import perturbed, rock_salt
from pymatgen.core import Lattice, Structure

from crysray.data.csv import load_split
from crysray.eval.run_dng import sun_rate


def _rocksalt(a: float, species: list[str], seed: int) -> Structure:
    return perturbed(rock_salt(a, species).get_primitive_structure(), 1.03, 0.02, seed=seed)


def _rows(structures: list[Structure]) -> pa.Table:
    return pa.Table.from_pylist(
        [
            {
                "sample_id": f"s{i}",
                "lattice": s.lattice.matrix.reshape(-1).tolist(),
                "frac_coords": s.frac_coords.reshape(-1).tolist(),
                "atomic_numbers": list(s.atomic_numbers),
            }
            for i, s in enumerate(structures)
        ]
    )


@pytest.mark.slow
def test_sun_counts_only_stable_unique_novel_rows_of_all_rows(reference_csv):
    training = load_split(reference_csv, workers=1)
    known = training.structures([list(training.material_id).index("mp-30875")])[0]  # Ti2Sn
    mgo, lif = _rocksalt(4.21, ["Mg", "O"], 0), _rocksalt(4.03, ["Li", "F"], 1)
    overlap = Structure(Lattice.cubic(4.2), ["Mg", "O"], [[0, 0, 0], [0.01, 0, 0]])
    rows = _rows([mgo, lif, mgo.copy(), known, overlap])  # copy: not unique; Ti2Sn: not novel
    result = sun_rate(rows, reference_csv)
    assert result["sun_samples"] == 5
    assert result["relaxed"] == 2  # only MgO and LiF pass every cheap stage
    assert result["funnel_counts"]["relax_status"] == {"converged": 2}
    # both are Materials Project ground states: stable against the offline MP hull
    assert result["stable_of_converged"] == 1.0
    assert result["sun_rate"] == pytest.approx(2 / 5)
    assert result["mean_e_above_hull"] < 0.1
