"""Ray Train and `ray job submit` end to end, on a real local Ray."""

from __future__ import annotations

import os
import subprocess
import sys

import pyarrow.dataset as ds
import pytest
import torch

from support import REPO, TINY
from crysray.sample.sampler import Composition, CrystalSampler
from crysray.train.checkpoint import read_checkpoint


@pytest.mark.slow
def test_ray_train_two_workers_checkpoint_loads_and_samples(tmp_path):
    from crysray.data.csv import dataset_path, load_split

    for split in ("train", "val"):  # parse once here; both workers then read the Parquet cache
        load_split(dataset_path("perov_5", split))
    export = tmp_path / "model.pt"
    cmd = [sys.executable, str(REPO / "jobs" / "train.py"), "--workers", "2", "--storage", str(tmp_path / "ray"),
           "--name", "t", "--export", str(export), *TINY, "train.max_steps=12", "train.batch_size=32"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    payload = read_checkpoint(export)
    assert payload["step"] == 12 and set(payload) >= {"config", "ema"}
    assert payload["config"]["data"]["lattice_std"] == pytest.approx(1.9619, abs=1e-3)  # from the split
    sampler = CrystalSampler(str(export), steps=5, device="cpu")
    table = sampler.sample_unit(0, 0, [Composition("sto", torch.tensor([38, 22, 8, 8, 8]).numpy())] * 3)
    assert table.num_rows == 3 and set(table.column("formula").to_pylist()) == {"SrTiO3"}
    # the run directory holds Ray Train's checkpoint of the last report
    assert list((tmp_path / "ray" / "t").glob("checkpoint_*/checkpoint.pt"))


@pytest.fixture
def ray_head(tmp_path):
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    start = ["ray", "start", "--head", "--node-ip-address=127.0.0.1", "--port=6391", "--dashboard-host=127.0.0.1",
             "--dashboard-port=8291", "--num-cpus=2", "--disable-usage-stats"]
    subprocess.run(start, check=True, capture_output=True, env=env, timeout=180)
    yield env
    subprocess.run(["ray", "stop", "--force"], capture_output=True, timeout=120)


@pytest.mark.slow
def test_ray_job_submit_mass_sample(ray_head, tiny_checkpoint, formulas_file, tmp_path):
    out = tmp_path / "out"
    cmd = ["ray", "job", "submit", "--address", "http://127.0.0.1:8291", "--working-dir", ".", "--",
           "python", "jobs/mass_sample.py", "--checkpoint", str(tiny_checkpoint), "--compositions",
           str(formulas_file), "--num-samples", "30", "--unit-size", "10", "--replicas", "2", "--out", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO, env=ray_head)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "succeeded" in result.stdout + result.stderr
    table = ds.dataset(out / "data", format="parquet").to_table()
    assert table.num_rows == 30 and len(set(table.column("sample_id").to_pylist())) == 30
