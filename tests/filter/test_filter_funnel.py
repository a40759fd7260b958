"""crysray.filter.funnel and actor: every row kept, every stage counted."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from crystals import perturbed, rock_salt
from pymatgen.core import Structure

from crysray.data.csv import load_split
from crysray.filter.actor import StabilityFunnel
from crysray.filter.config import FunnelConfig
from crysray.filter.funnel import run_funnel
from crysray.filter.uniqueness import TrainingSet


def row(sample_id: str, lattice, frac, numbers) -> dict:
    return {
        "sample_id": sample_id,
        "lattice": np.asarray(lattice, float).reshape(-1).tolist(),
        "frac_coords": np.asarray(frac, float).reshape(-1).tolist(),
        "atomic_numbers": list(numbers),
    }


def from_structure(sample_id: str, s: Structure) -> dict:
    return row(sample_id, s.lattice.matrix, s.frac_coords, s.atomic_numbers)


@pytest.fixture(scope="module")
def training(reference_csv):
    return load_split(reference_csv, workers=1)


@pytest.fixture(scope="module")
def table(training) -> pa.Table:
    mgo = perturbed(
        rock_salt(4.21, ["Mg", "O"]),
        1.03,
        0.02,
    )
    lif = perturbed(
        rock_salt(4.03, ["Li", "F"]),
        1.03,
        0.02,
        seed=1,
    )
    known = training.structures([list(training.material_id).index("mp-30875")])[0]  # Ti2Sn
    rows = [
        from_structure("mgo", mgo),
        from_structure("lif", lif),
        from_structure("mgo-again", mgo),
        from_structure("nacl", perturbed(rock_salt(5.69), 1.02, 0.02)),  # Cl: not in the reference
        from_structure("known", known),
        row("nan-lattice", np.full((3, 3), np.nan), [[0, 0, 0], [0.5, 0.5, 0.5]], [12, 8]),
        row("overlap", np.eye(3) * 4.2, [[0, 0, 0], [0.01, 0, 0]], [12, 8]),
        row("nacl2", np.eye(3) * 5.0, [[0, 0, 0], [0.5, 0.5, 0.5], [0, 0.5, 0.5]], [11, 17, 17]),
        row("malformed", np.eye(3) * 4.0, [[0, 0, 0]], [12, 8]),
    ]
    return pa.Table.from_pylist(rows)


EXPECTED_COUNTS = {
    "total": 9,
    "passed": {"structure": 6, "composition": 7, "unique": 5, "novel": 5, "relax": 3, "hull": 3},
    "funnel": {"structure": 6, "composition": 5, "unique": 4, "novel": 3, "relax": 3, "hull": 3},
    "composition_not_checked": 0,
    "relax_status": {"converged": 3},
    "hull_status": {"ok": 3},
    "hull": "local",
    "stable_on_thin_hull": 3,  # 40 reference rows: every stable call here rests on a thin hull
    "sun": 3,
    "sun_fraction": 3 / 9,
}


def test_funnel_keeps_every_row_and_counts_each_stage(table, potential, hull, references, training):
    progress = []
    out, counts = run_funnel(
        table,
        FunnelConfig(hull="local", relax_steps=300),
        potential=potential,
        hull=hull,
        references=references,
        training_structures=TrainingSet.from_table(training),
        on_progress=progress.append,
    )
    # progress within the batch: the 6 rows not relaxed at once, then the 3 relaxed ones as
    # they settle; every row exactly once
    assert progress[0] == 6 and sum(progress) == 9 and all(n > 0 for n in progress)
    assert out.num_rows == table.num_rows
    assert out["sample_id"].to_pylist() == table["sample_id"].to_pylist()
    seconds = counts.pop("seconds")
    assert counts == EXPECTED_COUNTS
    assert list(seconds) == ["structure", "composition", "unique", "novel", "relax", "hull"]
    by_id = {r["sample_id"]: r for r in out.to_pylist()}
    assert by_id["mgo-again"]["duplicate_of"] == "mgo" and not by_id["mgo-again"]["unique"]
    assert by_id["known"]["novel"] is False and by_id["known"]["relax_status"] is None
    assert by_id["nacl2"]["pass_structure"] and not by_id["nacl2"]["pass_composition"]
    # Na-Cl has no compound in this small hull: a call from the elements alone, and it says so
    nacl = by_id["nacl"]
    assert nacl["hull_status"] == "ok" and nacl["hull_reference_phases"] == 0
    assert nacl["e_above_hull"] < 0 and nacl["hull_reference"] == "local"
    for sample_id in ("nan-lattice", "overlap", "malformed"):
        assert by_id[sample_id]["pass_structure"] is False
        assert (
            by_id[sample_id]["energy_per_atom"] is None and by_id[sample_id]["pass_relax"] is False
        )
    mgo = by_id["mgo"]
    assert mgo["relax_status"] == "converged" and mgo["stable"] and mgo["sun"]
    assert len(mgo["relaxed_lattice"]) == 9 and len(mgo["relaxed_frac_coords"]) == 3 * 8
    assert mgo["formation_energy_per_atom"] == pytest.approx(-3.05, abs=0.1)  # MP: -3.05 eV/atom


def test_cheap_stages_alone_need_no_model(table):
    progress = []
    out, counts = run_funnel(
        table, stages=("structure", "composition", "unique"), on_progress=progress.append
    )
    assert progress == [9]  # nothing relaxed: every row done at the end
    assert out.num_rows == 9 and "energy_per_atom" not in out.column_names
    assert counts["funnel"] == {"structure": 6, "composition": 5, "unique": 4}
    with pytest.raises(ValueError, match="hull"):
        run_funnel(table, stages=("structure", "relax", "hull"))


def test_actor_maps_a_batch(table, reference_csv, reference_cache, monkeypatch):
    monkeypatch.setattr("crysray.filter.local_hull.default_local_sources", lambda: [reference_csv])
    config = FunnelConfig(hull="local", training_dataset=str(reference_csv),
                          cache_dir=str(reference_cache), relax_steps=300)  # fmt: skip
    actor = StabilityFunnel(config.as_dict())
    out = actor(table)
    assert out.num_rows == 9 and out.column_names[: len(table.column_names)] == table.column_names
    counts = dict(actor.last_counts)
    counts.pop("seconds")
    assert counts == EXPECTED_COUNTS
    again = actor(out)  # re-running replaces the funnel columns instead of duplicating them
    assert again.column_names == out.column_names
