"""jobs/filter_stability.py and jobs/report.py over a real sampling run (real Ray, MatGL)."""

from __future__ import annotations

import json
import os

import pyarrow.dataset as ds
import pytest
from support import REPO, SHIPPED, run_job

from crysray.filter.campaign import read_decisions


@pytest.mark.slow
@pytest.mark.needs_shared
def test_funnel_job_keeps_every_row_counts_stages_and_resumes(tmp_path, job):
    out = tmp_path / "run"
    sampled = job(
        "mass_sample.py",
        "--checkpoint",
        SHIPPED,
        "--num-samples",
        24,
        "--unit-size",
        12,
        "--out",
        out,
    )
    assert sampled.returncode == 0, sampled.stderr[-3000:]
    args = ["--run", out, "--relax-steps", 40, "--hull", "local"]
    first = job("filter_stability.py", *args)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "filtered  24/24 crystals" in first.stderr  # progress counts crystals, not units
    manifest = json.loads((out / "funnel" / "_manifest.json").read_text())
    assert manifest["config"]["hull"] == "local" and manifest["config"]["relax_steps"] == 40
    assert manifest["hull"]["name"] == "local" and manifest["hull"]["materials"] > 10000

    raw = ds.dataset(out / "data").to_table()
    funnel = ds.dataset(sorted((out / "funnel").glob("unit-*.parquet"))).to_table()
    assert sorted(funnel["sample_id"].to_pylist()) == sorted(
        raw["sample_id"].to_pylist()
    )  # nothing dropped
    assert funnel["pass_structure"].to_pylist() == funnel["valid_structure"].to_pylist()
    summary = json.loads((out / "funnel" / "_summary.json").read_text())
    assert summary["total"] == 24
    assert summary["passed"]["structure"] == sum(raw["valid_structure"].to_pylist())
    relaxed = [s for s in funnel["relax_status"].to_pylist() if s is not None]
    assert summary["passed"]["relax"] == relaxed.count("converged")
    assert sum(summary["relax_status"].values()) == len(relaxed)
    # every relaxed row passed the cheap stages first
    for row in funnel.to_pylist():
        if row["relax_status"] is not None:
            assert row["pass_structure"] and row["pass_composition"]
    unique = read_decisions(out)
    assert unique.num_rows == 24 and summary["passed"]["unique"] == sum(
        unique["unique"].to_pylist()
    )

    relaxed_rows = [r for r in funnel.to_pylist() if r["energy_per_atom"] is not None]
    assert relaxed_rows and all(r["hull_reference"] == "local" for r in relaxed_rows)
    assert all(
        r["hull_reference_phases"] is not None for r in relaxed_rows if r["hull_status"] == "ok"
    )

    before = {p.name: p.read_bytes() for p in (out / "funnel").glob("unit-*.parquet")}
    again = job("filter_stability.py", *args)
    assert again.returncode == 0 and json.loads(again.stdout)["units_filtered_now"] == 0
    assert {p.name: p.read_bytes() for p in (out / "funnel").glob("unit-*.parquet")} == before
    other = job(
        "filter_stability.py",
        "--run",
        out,
        "--relax-steps",
        40,
        "--hull",
        "mp",
        "--offline",
        "--cache-dir",
        tmp_path / "empty-cache",
    )
    assert other.returncode == 2 and "Materials Project hull cache" in other.stderr
    changed = job("filter_stability.py", "--run", out, "--relax-steps", 60, "--hull", "local")
    assert changed.returncode == 2 and "relax_steps" in changed.stderr  # settings differ: refused
    assert {p.name: p.read_bytes() for p in (out / "funnel").glob("unit-*.parquet")} == before

    report = job("report.py", "--run", out)
    assert report.returncode == 0, report.stderr[-3000:]
    data = json.loads((out / "report.json").read_text())
    assert data["crystals"] == 24 and data["funnel"]["total"] == 24
    for png in data["plots"]:
        assert (out / png).read_bytes()[:4] == b"\x89PNG"


def test_funnel_job_rejects_a_directory_that_is_not_a_run(tmp_path):
    result = run_job("filter_stability.py", "--run", tmp_path)
    assert result.returncode == 2
    assert (
        result.stderr.strip().startswith("filter_stability: error:")
        and len(result.stderr.strip().splitlines()) == 1
    )


def test_mp_hull_without_a_key_is_one_line(tmp_path):
    out = tmp_path / "run"
    sampled = run_job("mass_sample.py", "--checkpoint", REPO / "tests" / "none.pt", "--out", out)
    assert sampled.returncode == 2  # (a missing checkpoint is refused before anything is written)
    env_free = run_job(
        "mass_sample.py", "--out", out, "--funnel", "--hull", "mp", "--num-samples", 2,
        timeout=300, env={k: v for k, v in os.environ.items() if k != "MP_API_KEY"},
    )  # fmt: skip
    assert env_free.returncode == 2 and "MP_API_KEY" in env_free.stderr
    assert len(env_free.stderr.strip().splitlines()) == 1
    assert not out.exists()  # refused before the run directory was created
