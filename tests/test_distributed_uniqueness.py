"""Run-wide uniqueness as a Ray Data stage (real local Ray) against the one-process pass."""

from __future__ import annotations

import json
import time

import numpy as np
import pyarrow as pa
import pytest
from crystals import cesium_chloride_type, perovskite, rock_salt, rotated_supercell

from crysray.filter.campaign import (
    decide_run_locally,
    finalize_run,
    funnel_key,
    funnel_table,
    read_decisions,
    run_uniqueness,
    with_uniqueness,
)
from crysray.filter.counts import funnel_counts
from crysray.sample.campaign import unit_key
from crysray.storage import Storage

ray = pytest.importorskip("ray")

ZERO_CELL = "zero cell"  # a row flagged valid whose lattice cannot be built
NO_STRUCTURE = "invalid"  # a row that failed the structure stage
KBR = ("K", "Br")

# work unit -> its rows. Sample ids are "0-{unit}-{index}": "0-10-0" sorts before "0-2-0", so
# the rock salt kept is unit 10's although unit 2 comes first by number.
UNITS = {
    1: [perovskite(3.9), ZERO_CELL, cesium_chloride_type(4.2, KBR)],
    2: [rock_salt(5.69), cesium_chloride_type(3.4), NO_STRUCTURE, cesium_chloride_type(4.3, KBR)],
    10: [
        rotated_supercell(rock_salt(5.69)),
        perovskite(3.95),
        rock_salt(5.75),
        cesium_chloride_type(3.4),
    ],
}
EXPECTED = {  # sample_id -> (unique, duplicate_of)
    "0-1-0": (True, None), "0-1-1": (False, None), "0-1-2": (True, None),
    "0-2-0": (False, "0-10-0"), "0-2-1": (False, "0-10-3"), "0-2-2": (False, None),
    "0-2-3": (False, "0-1-2"), "0-10-0": (True, None), "0-10-1": (False, "0-1-0"),
    "0-10-2": (False, "0-10-0"), "0-10-3": (True, None),
}  # fmt: skip


def unit_rows(unit: int, entries: list) -> pa.Table:
    """Funnel rows as the per-unit stages write them (the columns uniqueness and counts read)."""
    rows = []
    for index, entry in enumerate(entries):
        s = rock_salt(5.69) if isinstance(entry, str) else entry
        valid = entry != NO_STRUCTURE
        lattice = np.zeros(9) if entry == ZERO_CELL else s.lattice.matrix.ravel()
        stable = valid and index % 2 == 0
        rows.append({
            "sample_id": f"0-{unit}-{index}", "work_unit": unit,
            "formula": s.composition.reduced_formula, "num_atoms": len(s),
            "atomic_numbers": list(s.atomic_numbers), "frac_coords": s.frac_coords.ravel().tolist(),
            "lattice": lattice.tolist(), "valid_structure": valid, "pass_structure": valid,
            "pass_composition": valid, "novel": valid and index != 1,
            "relax_status": "converged" if valid else None, "pass_relax": valid,
            "energy_per_atom": -3.0 if valid else None, "stable": stable,
            "hull_status": "ok" if valid else None, "hull_reference": "local" if valid else None,
            "hull_reference_phases": 3 + index if valid else None,
        })  # fmt: skip
    table = pa.Table.from_pylist(rows)
    return table.set_column(
        table.schema.get_field_index("atomic_numbers"),
        "atomic_numbers",
        table["atomic_numbers"].cast(pa.list_(pa.int16())),
    )


def write_run(root) -> Storage:
    """A filtered run: funnel files per unit (and the sampled files a job lists)."""
    store = Storage(root)
    store.make_dir("funnel")
    store.make_dir("data")
    for unit, entries in UNITS.items():
        table = unit_rows(unit, entries)
        store.write_table(funnel_key(unit), table)
        store.write_table(unit_key(unit), table)
    store.write_text("manifest.json", json.dumps({"dataset": "perov_5"}))
    return store


def decisions_by_id(table: pa.Table) -> dict:
    rows = table.to_pylist()
    return {r["sample_id"]: (r["unique"], r["duplicate_of"]) for r in rows}


def test_one_process_pass_keeps_the_first_by_sample_id(tmp_path):
    store = write_run(tmp_path / "run")
    table = funnel_table(store)
    unique, duplicate_of = run_uniqueness(table)
    got = dict(zip(table["sample_id"].to_pylist(), zip(unique.tolist(), duplicate_of)))
    assert got == EXPECTED
    # the arrival order of the rows does not change who is kept
    shuffled = table.take(np.random.default_rng(0).permutation(table.num_rows))
    unique, duplicate_of = run_uniqueness(shuffled)
    assert dict(zip(shuffled["sample_id"].to_pylist(), zip(unique.tolist(), duplicate_of))) == got


@pytest.mark.slow
def test_distributed_stage_decides_as_the_driver_pass_and_deterministically(tmp_path, ray_address):
    """In this process, a driver of the session's Ray instance."""
    from crysray.distributed import decide_run_distributed

    store = write_run(tmp_path / "run")
    local_counts = finalize_run(store)
    local = decisions_by_id(read_decisions(store))
    assert local == EXPECTED
    table = funnel_table(store)
    assert local_counts == funnel_counts(with_uniqueness(table, run_uniqueness(table)[0]))

    start = time.perf_counter()
    counts = finalize_run(store, decide_run_distributed)
    seconds = time.perf_counter() - start
    first = read_decisions(store)
    assert first.num_rows == table.num_rows  # one decision per row, the local shard replaced
    assert decisions_by_id(first) == local
    assert counts == local_counts
    assert json.loads(store.read_text("funnel/_summary.json")) == local_counts
    shards = sorted(store.list_names("funnel/_unique", suffix=".parquet"))

    finalize_run(store, decide_run_distributed)
    assert sorted(store.list_names("funnel/_unique", suffix=".parquet")) == shards
    assert read_decisions(store).sort_by("sample_id").equals(first.sort_by("sample_id"))
    print(f"distributed uniqueness: {table.num_rows} rows in {seconds:.1f} s")


def test_local_decisions_are_one_shard(tmp_path):
    store = write_run(tmp_path / "run")
    counts = decide_run_locally(store)
    assert store.list_names("funnel/_unique") == ["part-local.parquet"]
    assert counts["passed"]["unique"] == sum(u for u, _ in EXPECTED.values())


def finished_job(store: Storage, mode: str, job) -> tuple[dict, dict]:
    """(summary, decisions by sample_id) after the job finalizes the run in ``mode``."""
    done = job("filter_stability.py", "--run", store.location, "--hull", "local",
               "--uniqueness", mode, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["units_filtered_now"] == 0
    return json.loads(store.read_text("funnel/_summary.json")), decisions_by_id(
        read_decisions(store)
    )


@pytest.mark.slow
@pytest.mark.needs_shared
def test_funnel_job_summary_is_the_same_either_way(tmp_path, job):
    store = write_run(tmp_path / "run")
    results = {}
    results["local"] = finished_job(store, "local", job)
    results["distributed"] = finished_job(store, "distributed", job)
    assert not store.exists("funnel/unique.parquet")
    for summary, decisions in results.values():
        assert (summary, decisions) == results["local"]
    assert results["local"][1] == EXPECTED
    assert results["local"][0]["passed"]["unique"] == sum(u for u, _ in EXPECTED.values())


@pytest.mark.slow
@pytest.mark.needs_shared
def test_distributed_stage_on_object_storage(s3_bucket, job):
    """The job's Ray workers read the funnel files and write the shards on S3."""
    store = write_run(s3_bucket.url("run"))
    table = funnel_table(store)
    expected_counts = funnel_counts(with_uniqueness(table, run_uniqueness(table)[0]))
    summary, decisions = finished_job(store, "distributed", job)
    assert decisions == EXPECTED and summary == expected_counts
    shards = [k for k in s3_bucket.objects("run") if k.startswith("run/funnel/_unique/part-")]
    assert shards and all(k.endswith(".parquet") for k in shards)
