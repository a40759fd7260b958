"""De novo generation through the sampling job (real Ray) and the funnel."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.dataset as ds
import pytest
from scipy import stats
from support import DNG_DATA, run_job, write_tiny_checkpoint

from crysray.sample.targets import AtomCountTargets, CompositionTargets


@pytest.fixture(scope="module")
def dng_checkpoint(tmp_path_factory):
    """A tiny untrained CrysBFN checkpoint of the DNG task."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("dng") / "dng.pt", ["method.task=dng"])


def test_atom_count_targets_are_deterministic_per_unit_and_follow_the_distribution():
    targets = AtomCountTargets(DNG_DATA["num_atoms_counts"])
    first = [c.num_atoms for c in targets.for_unit(0, 3000, seed=7, unit=4)]
    again = [c.num_atoms for c in targets.for_unit(0, 3000, seed=7, unit=4)]
    other = [c.num_atoms for c in targets.for_unit(0, 3000, seed=7, unit=5)]
    assert first == again and first != other
    observed = np.bincount(first, minlength=6)[[2, 4, 5]]
    assert stats.chisquare(observed, 3000 * np.array([1, 2, 3]) / 6).pvalue > 1e-3
    assert {c.num_atoms for c in AtomCountTargets.fixed(7).for_unit(0, 9, 0, 0)} == {7}
    assert targets.digest() != AtomCountTargets.fixed(7).digest()
    assert targets.digest() != CompositionTargets([]).digest()


@pytest.mark.parametrize("counts", [(0,), (1, 2), (0, -1, 2), (0, 0, 0)])
def test_bad_atom_count_distributions_are_refused(counts):
    with pytest.raises(ValueError, match="atom-count distribution"):
        AtomCountTargets(counts)


@pytest.mark.slow
@pytest.mark.needs_shared
def test_dng_campaign_writes_exactly_n_rows_resumes_and_goes_through_the_funnel(
    dng_checkpoint, tmp_path, job
):
    out = tmp_path / "run"
    args = ["--checkpoint", dng_checkpoint, "--task", "dng", "--num-samples", 300,
            "--unit-size", 60, "--batch-size", 64, "--replicas", 2, "--out", out]  # fmt: skip
    first = job("mass_sample.py", *args)
    assert first.returncode == 0, first.stderr[-3000:]
    table = ds.dataset(out / "data").to_table()
    ids = table["sample_id"].to_pylist()
    assert table.num_rows == 300 and len(set(ids)) == 300
    assert set(table["source_id"].to_pylist()) == {""}
    sizes = np.bincount(table["num_atoms"].to_numpy(), minlength=6)
    assert sizes[[0, 1, 3]].sum() == 0
    assert stats.chisquare(sizes[[2, 4, 5]], 300 * np.array([1, 2, 3]) / 6).pvalue > 1e-3
    types = {z for row in table["atomic_numbers"].to_pylist() for z in row}
    assert types <= set(DNG_DATA["atom_types"])  # no type outside the model's vocabulary
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["task"] == "dng" and manifest["targets"] == "atom_counts"

    # a lost unit is regenerated identically; nothing else is touched
    unit = out / "data" / "unit-00000002.parquet"
    before = unit.read_bytes()
    unit.unlink()
    again = job("mass_sample.py", *args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "generated now     60" in again.stdout
    assert ds.dataset(out / "data").to_table().num_rows == 300
    assert unit.read_bytes() == before

    funnel = job("filter_stability.py", "--run", out, "--relax-steps", 5, "--hull", "local")
    assert funnel.returncode == 0, funnel.stderr[-3000:]
    summary = json.loads((out / "funnel" / "_summary.json").read_text())
    assert summary["total"] == 300


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--compositions", "x.txt"], "--compositions is for --task csp"),
        ([], "--task dng needs --num-samples"),
        (["--num-samples", 5, "--num-atoms", 300], "--num-atoms 300 is above --max-atoms 200"),
        (["--num-samples", 5, "--funnel", "--hull", "mp"], "DNG does not know"),
    ],
)
def test_dng_job_input_errors(extra, message, dng_checkpoint, tmp_path):
    result = run_job("mass_sample.py", "--checkpoint", dng_checkpoint, "--out", tmp_path / "o",
                     *extra)  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().startswith("mass_sample: error:") and message in result.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "variant"), [("crysbfn", None), ("kldm", "d"), ("kldm", "c"), ("kldm", "c-ab")]
)
def test_every_method_generates_through_the_job(method, variant, tmp_path, job):
    overrides = ["method.task=dng"] + ([f"method.type_variant={variant}"] if variant else [])
    checkpoint = write_tiny_checkpoint(tmp_path / "m.pt", overrides, method=method)
    out = tmp_path / "run"
    result = job("mass_sample.py", "--checkpoint", checkpoint, "--num-samples", 12,
                 "--unit-size", 6, "--steps", 4, "--out", out)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    table = ds.dataset(out / "data").to_table()
    assert table.num_rows == 12 and set(table["method"].to_pylist()) == {method}
    types = {z for row in table["atomic_numbers"].to_pylist() for z in row}
    assert types <= set(DNG_DATA["atom_types"])
