"""jobs/mass_sample.py on a real local Ray: row counts, unique ids, faults, resume, bad input."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import support
from support import write_tiny_checkpoint

from crysray.sample.campaign import finished_units
from crysray.storage import Storage

run_job = functools.partial(support.run_job, "mass_sample.py")
start_job = functools.partial(support.start_job, "mass_sample.py")


def read_rows(out):
    """Every finished unit's rows of a run on local disk (a Path) or object storage (a URL)."""
    store = Storage(out)
    return store.dataset([f"data/{n}" for n in store.list_names("data", "unit-")]).to_table()


def assert_exactly(out: Path, n: int) -> None:
    table = read_rows(out)
    assert table.num_rows == n
    ids = table.column("sample_id").to_pylist()
    assert len(set(ids)) == n
    assert sorted(int(i.split("-")[-1]) for i in ids) == list(range(n))


def wait_for_units(out, count: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while len(finished_units(out)) < count:
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline, "no progress"
        time.sleep(0.2)


@pytest.mark.slow
def test_two_replicas_write_exactly_n_unique_rows(
    tiny_checkpoint, formulas_file, tmp_path, ray_address
):
    out = tmp_path / "run"
    result = run_job(
        "--checkpoint",
        tiny_checkpoint,
        "--compositions",
        formulas_file,
        "--num-samples",
        250,
        "--unit-size",
        40,
        "--batch-size",
        16,
        "--replicas",
        2,
        "--out",
        out,
        ray_address=ray_address,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert_exactly(out, 250)
    table = read_rows(out)
    # compositions cycle in file order: sample k uses formula k mod 4
    first = table.sort_by("work_unit").slice(0, 4).column("formula").to_pylist()
    assert sorted(first) == sorted(["SrTiO3", "BaTiO3", "CaTiO3", "NaCl"])
    assert set(table.column("steps").to_pylist()) == {10}
    assert "rows in dataset   250" in result.stdout
    # the replicas read their compositions from the run's own copy of the list
    stored = pq.read_table(out / "compositions.parquet")
    assert stored.column("source_id").to_pylist() == ["SrTiO3", "my-bto", "Ca2Ti2O6", "NaCl"]


@pytest.mark.slow
def test_a_parquet_composition_file_cycles_in_row_order(tiny_checkpoint, tmp_path, ray_address):
    import pyarrow as pa

    formulas = tmp_path / "formulas.parquet"
    pq.write_table(pa.table({"formula": ["NaCl", "SrTiO3", "KBr"], "id": ["a", "b", "c"]}),
                   formulas, row_group_size=2)  # fmt: skip
    out = tmp_path / "run"
    result = run_job("--checkpoint", tiny_checkpoint, "--compositions", formulas,
                     "--num-samples", 20, "--unit-size", 6, "--steps", 3, "--out", out,
                     ray_address=ray_address)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert_exactly(out, 20)
    rows = read_rows(out).to_pydict()
    by_index = {int(i.split("-")[-1]): s for i, s in zip(rows["sample_id"], rows["source_id"])}
    assert [by_index[k] for k in range(20)] == ["a", "b", "c"] * 6 + ["a", "b"]


@pytest.fixture(params=["local", "s3"])
def run_location(request, tmp_path):
    """A new run's --out: a local directory, or a prefix on an S3 server on 127.0.0.1."""
    if request.param == "local":
        return tmp_path / "run"
    return request.getfixturevalue("s3_bucket").url("run")


@pytest.mark.slow
def test_killed_actor_and_killed_driver_still_end_with_exactly_n(
    tiny_checkpoint, formulas_file, run_location
):
    out = run_location
    args = [
        "--checkpoint",
        tiny_checkpoint,
        "--compositions",
        formulas_file,
        "--num-samples",
        600,
        "--unit-size",
        20,
        "--batch-size",
        20,
        "--steps",
        40,
        "--replicas",
        2,
        "--units-per-task",  # several units per Ray task: a killed task redoes only unwritten ones
        3,
        "--out",
        out,
    ]
    proc = start_job(*args)
    wait_for_units(out, 2, proc)
    # only this job's processes: its session (start_new_session), never other Ray work by name
    actors = subprocess.run(
        ["pgrep", "-s", str(proc.pid), "-f", "MapWorker"], capture_output=True, text=True
    ).stdout.split()
    assert actors, "no sampling actor found"
    os.kill(int(actors[0]), signal.SIGKILL)  # Ray restarts the actor and retries its unit
    wait_for_units(out, 8, proc)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver dies mid-run, with the Ray it started
    proc.wait()
    subprocess.run(["pkill", "-KILL", "-s", str(proc.pid)], capture_output=True)
    assert len(read_rows(out)) < 600
    rerun = run_job(*args)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert_exactly(out, 600)


def test_rerun_of_a_finished_run_changes_nothing(tiny_checkpoint, formulas_file, tmp_path):
    from crysray.sample.campaign import CampaignSpec, CampaignWorker, open_run
    from crysray.sample.compositions import read_compositions
    from crysray.sample.targets import CompositionTargets
    from crysray.train.checkpoint import checkpoint_hash

    comps = CompositionTargets(read_compositions(formulas_file))
    spec = CampaignSpec("csp", checkpoint_hash(tiny_checkpoint), comps.digest(), 30, 5, 7, 8, 8)
    todo = open_run(tmp_path, spec)
    assert todo == [0, 1, 2, 3]
    worker = CampaignWorker(str(tiny_checkpoint), str(tmp_path), spec.__dict__, comps, threads=1)
    first = worker({"unit": [1]})
    assert first["rows"].tolist() == [8]
    before = (tmp_path / "data" / "unit-00000001.parquet").read_bytes()
    again = CampaignWorker(str(tiny_checkpoint), str(tmp_path), spec.__dict__, comps, threads=1)
    assert again.run_unit(1)["seconds"] == 0.0  # skipped, not regenerated
    assert (tmp_path / "data" / "unit-00000001.parquet").read_bytes() == before
    # a unit regenerated from scratch is identical: rows depend only on (spec, unit)
    original = pq.read_table(tmp_path / "data" / "unit-00000001.parquet")
    (tmp_path / "data" / "unit-00000001.parquet").unlink()
    again.run_unit(1)
    assert pq.read_table(tmp_path / "data" / "unit-00000001.parquet").equals(original)
    assert open_run(tmp_path, spec) == [0, 2, 3]


@pytest.mark.parametrize(
    "case",
    [
        "missing_checkpoint",
        "unreadable_compositions",
        "bad_formula",
        "unknown_element",
        "too_many_atoms",
        "zero_steps",
        "zero_replicas",
        pytest.param("other_run", marks=pytest.mark.slow),  # a first run on Ray
        pytest.param("other_sampler_options", marks=pytest.mark.slow),
        "unknown_sampler",
        "unknown_sampler_option",
        "foreign_files",
    ],
)
def test_bad_input_fails_with_one_line_and_touches_nothing(
    case, tiny_checkpoint, kldm_checkpoint, formulas_file, tmp_path, request
):
    out = tmp_path / "out"
    args = {
        "--checkpoint": tiny_checkpoint,
        "--compositions": formulas_file,
        "--out": out,
        "--steps": 5,
    }
    if case == "missing_checkpoint":
        args["--checkpoint"] = tmp_path / "nope.pt"
    elif case == "unreadable_compositions":
        bad = tmp_path / "bad.txt"
        bad.write_bytes(b"\xff\xfe\x00garbage")
        args["--compositions"] = bad
    elif case == "bad_formula":
        bad = tmp_path / "bad.txt"
        bad.write_text("SrTiO3\nnot a formula!\n")
        args["--compositions"] = bad
    elif case in ("unknown_element", "too_many_atoms"):
        bad = tmp_path / "bad.txt"
        bad.write_text(
            "SrTiO3\n" + ("Xx2O3" if case == "unknown_element" else "Fe1000O1500") + "\nNaCl\n"
        )
        args["--compositions"] = bad
    elif case == "zero_steps":
        args["--steps"] = 0
    elif case == "zero_replicas":
        args["--replicas"] = 0
    elif case == "other_run":
        first = run_job(*[x for k, v in {**args, "--num-samples": 3}.items() for x in (k, v)],
                        ray_address=request.getfixturevalue("ray_address"))  # fmt: skip
        assert first.returncode == 0, first.stderr[-2000:]
        args["--seed"] = 99
    elif case == "other_sampler_options":
        first = run_job(*[x for k, v in {**args, "--num-samples": 3}.items() for x in (k, v)],
                        "--checkpoint", kldm_checkpoint, "--sampler", "em",
                        ray_address=request.getfixturevalue("ray_address"))  # fmt: skip
        assert first.returncode == 0, first.stderr[-2000:]
        args["--checkpoint"] = kldm_checkpoint  # same run, but the pc sampler
    elif case == "unknown_sampler":
        args["--sampler"] = "ode"
    elif case == "unknown_sampler_option":
        args["--sampler-option"] = "snr=0.1"  # CrysBFN's end-back sampler has no options
    elif case == "foreign_files":
        out.mkdir()
        (out / "thesis.tex").write_text("precious")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} if out.exists() else {}
    result = run_job(*[x for k, v in args.items() for x in (k, v)])
    assert result.returncode != 0
    lines = [line for line in result.stderr.strip().splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("mass_sample: error:"), result.stderr
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} if out.exists() else {}
    assert after == before
    if case in ("unknown_element", "too_many_atoms"):
        assert "bad.txt:2" in lines[0]  # the line is named
        assert ("unknown element 'Xx'" if case == "unknown_element" else "--max-atoms") in lines[0]
    if case == "other_sampler_options":
        assert "differs in: " in lines[0] and "sampler_options" in lines[0]
    if case == "unknown_sampler":
        assert "crysbfn has no sampler 'ode'; choose from end-back" in lines[0]


@pytest.fixture(scope="module")
def kldm_checkpoint(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("kldm") / "kldm.pt", method="kldm")


def test_version_one_files_read_as_version_two(tmp_path):
    """Files written before the sampler columns read with the values their runs used."""
    import torch

    from crysray.sample.schema import SCHEMA_VERSION, batch_to_table, read_samples
    from crysray.types import CrystalBatch

    crystals = CrystalBatch(
        torch.rand(4, 3), 4 * torch.eye(3).repeat(2, 1, 1), torch.tensor([11, 17, 11, 17]),
        torch.tensor([2, 2]),
    )  # fmt: skip
    common = {"source_ids": ["a", "b"], "method": "crysbfn", "checkpoint_hash": "h", "seed": 0}
    end_back = {"sampler_options": {"sampler": "end-back"}, "network_evaluations": 10}
    v2 = batch_to_table(crystals, work_unit=1, first_index=2, steps=10, **common, **end_back)
    v1 = v2.drop_columns(["sampler", "sampler_options", "network_evaluations"])
    pq.write_table(v1.replace_schema_metadata({"crysray_schema_version": "1"}), tmp_path / "1.pq")
    kldm = batch_to_table(crystals, work_unit=2, first_index=4, steps=100, **common,
                          sampler_options={"sampler": "pc", "corrector_steps": 1, "snr": 0.25},
                          network_evaluations=200)  # fmt: skip
    pq.write_table(kldm, tmp_path / "2.pq")
    table = read_samples([tmp_path / "1.pq", tmp_path / "2.pq"])
    assert table.num_rows == 4
    assert table.schema.metadata[b"crysray_schema_version"] == str(SCHEMA_VERSION).encode()
    assert table["sampler"].to_pylist() == ["end-back"] * 2 + ["pc"] * 2
    assert table["sampler_options"].to_pylist()[1:3] == [
        "{}",
        '{"corrector_steps": 1, "snr": 0.25}',
    ]
    assert table["network_evaluations"].to_pylist() == [10, 10, 200, 200]
    assert (
        table.drop_columns(["sampler", "sampler_options", "network_evaluations"])
        .slice(0, 2)
        .equals(v1)
    )


@pytest.mark.slow
def test_invalid_compositions_can_be_skipped_and_counted(tiny_checkpoint, tmp_path, ray_address):
    formulas = tmp_path / "f.txt"
    formulas.write_text("SrTiO3\nXx2O3\nFe1000O1500\nNaCl\n")
    out = tmp_path / "run"
    result = run_job(
        "--checkpoint",
        tiny_checkpoint,
        "--compositions",
        formulas,
        "--steps",
        3,
        "--skip-invalid-compositions",
        "--out",
        out,
        ray_address=ray_address,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "skipped           2 invalid compositions" in result.stdout
    assert sorted(read_rows(out).column("formula").to_pylist()) == ["NaCl", "SrTiO3"]


SABOTAGE = """
import os
from crysray.sample import sampler

_original = sampler.CrystalSampler.sample_unit

def sample_unit(self, unit, *args, **kwargs):
    if unit == 1:
        raise RuntimeError("this unit always fails")
    if unit == 2:
        os._exit(1)  # the replica dies, as when the kernel kills it for memory
    return _original(self, unit, *args, **kwargs)

sampler.CrystalSampler.sample_unit = sample_unit
"""


@pytest.mark.slow
def test_a_unit_that_keeps_failing_is_given_up_and_the_rest_finishes(
    tiny_checkpoint, formulas_file, tmp_path
):
    from crysray.sample.campaign import DIED, MAX_UNIT_ATTEMPTS

    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(SABOTAGE)  # loaded by the driver and every Ray worker
    env = {**os.environ, "PYTHONPATH": str(hooks)}
    out = tmp_path / "run"
    args = [
        "--checkpoint",
        tiny_checkpoint,
        "--compositions",
        formulas_file,
        "--num-samples",
        40,
        "--unit-size",
        10,
        "--steps",
        3,
        "--out",
        out,
    ]
    result = run_job(*args, env=env)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "FAILED unit 1  RuntimeError: this unit always fails" in result.stdout
    assert f"FAILED unit 2  {DIED}" in result.stdout
    table = read_rows(out)
    assert sorted(set(table.column("work_unit").to_pylist())) == [0, 3] and table.num_rows == 20
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["failed_units"]) == {"1", "2"}
    attempts = json.loads((out / "attempts" / "unit-00000002.json").read_text())
    assert attempts["attempts"] == MAX_UNIT_ATTEMPTS  # bounded, not retried forever
    before = {p.name: p.read_bytes() for p in (out / "data").glob("*.parquet")}
    again = run_job(*args, env=env)  # a rerun resumes: the given-up units stay given up
    assert (
        again.returncode == 1
        and {p.name: p.read_bytes() for p in (out / "data").glob("*.parquet")} == before
    )


def test_rows_turn_back_into_structures_and_files(tiny_checkpoint, formulas_file, tmp_path):
    from crysray.sample.compositions import read_compositions
    from crysray.sample.sampler import CrystalSampler
    from crysray.sample.schema import write_structures
    from crysray.structures import rows_to_structures

    table = CrystalSampler(str(tiny_checkpoint), steps=3, threads=1).sample_unit(
        0, 0, read_compositions(formulas_file)
    )
    structures = rows_to_structures(table)
    assert [s.composition.reduced_formula for s in structures] == table.column(
        "formula"
    ).to_pylist()
    assert write_structures(table, tmp_path / "cif") == 4
    names = zip(table.column("sample_id").to_pylist(), table.column("formula").to_pylist())
    assert sorted(p.stem for p in (tmp_path / "cif").glob("*.cif")) == sorted(
        f"{sid}_{formula}" for sid, formula in names
    )
    assert write_structures(table, tmp_path / "xyz", fmt="extxyz") == 4
    from ase.io import read

    assert len(read(tmp_path / "xyz" / "structures.extxyz", index=":")) == 4
    with pytest.raises(ValueError, match="unknown structure format"):
        write_structures(table, tmp_path / "x", fmt="pdb")


def test_a_run_written_before_a_spec_field_existed_still_resumes(tmp_path):
    from crysray.sample.campaign import CampaignSpec, RunDirectoryError, open_run

    spec = CampaignSpec("csp", "abc", "def", 30, 5, 7, 8, 8, dataset="")
    assert open_run(tmp_path, spec) == [0, 1, 2, 3]
    manifest = tmp_path / "manifest.json"
    old = json.loads(manifest.read_text())
    del old["dataset"], old["precision"]  # as written by an older crysray
    manifest.write_text(json.dumps(old))
    assert open_run(tmp_path, spec) == [0, 1, 2, 3]
    with pytest.raises(RunDirectoryError, match="seed"):
        open_run(tmp_path, CampaignSpec("csp", "abc", "def", 30, 5, 8, 8, 8))
