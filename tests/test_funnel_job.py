"""jobs/filter_stability.py and jobs/report.py over a real sampling run (real Ray, MatGL)."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from support import REPO

from crysray.resources import dataset_file

SHIPPED = REPO / "checkpoints" / "crysbfn_perov5.pt"


def run(script: str, *args, timeout=900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "jobs" / script), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)


@pytest.fixture(scope="module")
def small_reference(tmp_path_factory):
    """The first 150 MP-20 pilot rows: enough for a hull, quick to compute energies for."""
    src = dataset_file("mp_20_pilot", "train")
    path = tmp_path_factory.mktemp("ref") / "reference.csv"
    pd.read_csv(src).head(150).to_csv(path, index=False)
    return path


@pytest.mark.slow
def test_funnel_job_keeps_every_row_counts_stages_and_resumes(tmp_path, small_reference):
    out = tmp_path / "run"
    sampled = run("mass_sample.py", "--checkpoint", SHIPPED, "--num-samples", 24, "--unit-size", 12, "--out", out)
    assert sampled.returncode == 0, sampled.stderr[-3000:]
    args = ["--run", out, "--relax-steps", 40, "--reference-datasets", small_reference]
    first = run("filter_stability.py", *args)
    assert first.returncode == 0, first.stderr[-3000:]

    raw = ds.dataset(out / "data").to_table()
    funnel = ds.dataset(sorted((out / "funnel").glob("unit-*.parquet"))).to_table()
    assert sorted(funnel["sample_id"].to_pylist()) == sorted(raw["sample_id"].to_pylist())  # nothing dropped
    assert funnel["pass_structure"].to_pylist() == funnel["valid_structure"].to_pylist()
    summary = json.loads((out / "funnel" / "summary.json").read_text())
    assert summary["total"] == 24
    assert summary["passed"]["structure"] == sum(raw["valid_structure"].to_pylist())
    relaxed = [s for s in funnel["relax_status"].to_pylist() if s is not None]
    assert summary["passed"]["relax"] == relaxed.count("converged")
    assert sum(summary["relax_status"].values()) == len(relaxed)
    # every relaxed row passed the cheap stages first
    for row in funnel.to_pylist():
        if row["relax_status"] is not None:
            assert row["pass_structure"] and row["pass_composition"]
    unique = pq.read_table(out / "funnel" / "unique.parquet")
    assert unique.num_rows == 24 and summary["passed"]["unique"] == sum(unique["unique"].to_pylist())

    before = {p.name: p.read_bytes() for p in (out / "funnel").glob("unit-*.parquet")}
    again = run("filter_stability.py", *args)
    assert again.returncode == 0 and json.loads(again.stdout)["units_filtered_now"] == 0
    assert {p.name: p.read_bytes() for p in (out / "funnel").glob("unit-*.parquet")} == before

    report = run("report.py", "--run", out)
    assert report.returncode == 0, report.stderr[-3000:]
    data = json.loads((out / "report.json").read_text())
    assert data["crystals"] == 24 and data["funnel"]["total"] == 24
    for png in data["plots"]:
        assert (out / png).read_bytes()[:4] == b"\x89PNG"


def test_funnel_job_rejects_a_directory_that_is_not_a_run(tmp_path):
    result = run("filter_stability.py", "--run", tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("filter_stability: error:") and len(result.stderr.strip().splitlines()) == 1
