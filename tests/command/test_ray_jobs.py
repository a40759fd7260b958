"""Ray Train and `ray job submit` end to end, on a real local Ray."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pyarrow.dataset as ds
import pytest
import torch
from support import REPO, TINY

from crysray.resources import dataset_file
from crysray.sample.sampler import Composition, CrystalSampler
from crysray.train.checkpoint import read_checkpoint


@pytest.mark.slow
@pytest.mark.needs_shared
def test_ray_train_two_workers_checkpoint_loads_and_samples(tmp_path):
    from crysray.data.csv import dataset_path, load_split

    for split in ("train", "val"):  # parse once here; both workers then read the Parquet cache
        load_split(dataset_path("perov_5", split))
    export = tmp_path / "model.pt"
    cmd = [
        sys.executable,
        str(REPO / "jobs" / "train.py"),
        "--workers",
        "2",
        "--storage",
        str(tmp_path / "ray"),
        "--name",
        "t",
        "--export",
        str(export),
        *TINY,
        "train.max_steps=12",
        "train.batch_size=32",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    payload = read_checkpoint(export)
    assert payload["step"] == 12 and set(payload) >= {"config", "ema"}
    assert payload["config"]["data"]["lattice_std"] == pytest.approx(
        1.9619, abs=1e-3
    )  # from the split
    sampler = CrystalSampler(str(export), steps=5, device="cpu")
    table = sampler.sample_unit(
        0, 0, [Composition("sto", torch.tensor([38, 22, 8, 8, 8]).numpy())] * 3
    )
    assert table.num_rows == 3 and set(table.column("formula").to_pylist()) == {"SrTiO3"}
    # the run directory holds Ray Train's checkpoint of the last report
    assert list((tmp_path / "ray" / "t").glob("checkpoint_*/checkpoint.pt"))


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for sock in sockets:  # all bound at once, so the n ports are distinct
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@pytest.fixture(scope="module")
def ray_head():
    """A Ray head of our own on loopback (own temp dir and ports), with token auth, shared by
    this module's tests (each submits its own jobs and writes to its own folder).

    ``ray start --block`` keeps the head's processes as its children in a new session; stopping
    it (SIGTERM to that one process, then its process group if anything lingers) ends exactly
    what this fixture started, never another Ray on the machine. The environment is what a user
    would have: no PYTHONPATH and no data folders, so jobs run from the working-dir copy.
    """
    # under /tmp, not pytest's deep tmp_path: Ray's unix socket paths must stay short
    temp_dir = Path(tempfile.mkdtemp(prefix="crysray-ray-"))
    ports = _free_ports(9)
    gcs, dashboard, client, agent, agent_grpc, metrics, runtime_env, node_mgr, objects = ports
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in (
            "PYTHONPATH",
            "RAY_ADDRESS",
            "CRYSRAY_DATA_DIR",
            "CRYSRAY_MATGL_DIR",
            "CRYSRAY_MATGL_MODEL",
            "CRYSRAY_DATA_URL",
            "CRYSRAY_MATGL_URL",
        )
    }
    env["RAY_AUTH_MODE"] = "token"
    start = [
        "ray",
        "start",
        "--head",
        "--block",
        f"--temp-dir={temp_dir}",
        "--node-ip-address=127.0.0.1",
        f"--port={gcs}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard}",
        f"--ray-client-server-port={client}",
        f"--dashboard-agent-listen-port={agent}",
        f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--metrics-export-port={metrics}",
        f"--runtime-env-agent-port={runtime_env}",
        f"--node-manager-port={node_mgr}",
        f"--object-manager-port={objects}",
        "--min-worker-port=0",
        "--max-worker-port=0",
        "--num-cpus=2",
        "--disable-usage-stats",
    ]
    log = temp_dir / "ray-start.log"
    with open(log, "w") as out:
        head = subprocess.Popen(
            start, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 180
        while "block forever" not in log.read_text():
            assert head.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "no Ray head:\n" + log.read_text()[-3000:]
            time.sleep(0.5)
        yield {"env": env, "address": f"http://127.0.0.1:{dashboard}"}
    finally:
        _stop_head(head)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _stop_head(head: subprocess.Popen) -> None:
    head.send_signal(signal.SIGTERM)  # ray start --block then shuts down every process it started
    try:
        head.wait(timeout=90)
    except subprocess.TimeoutExpired:
        pass
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.killpg(head.pid, 0)  # anything left in the head's own process group?
        except ProcessLookupError:
            break
        time.sleep(0.5)
    else:
        os.killpg(head.pid, signal.SIGKILL)
    head.wait(timeout=30)


def submit_mass_sample(ray_head, *job_args) -> subprocess.CompletedProcess:
    """``ray job submit --working-dir . -- python jobs/mass_sample.py ...`` from the repo root."""
    cmd = ["ray", "job", "submit", "--address", ray_head["address"], "--working-dir", ".", "--",
           "python", "jobs/mass_sample.py", *map(str, job_args)]  # fmt: skip
    result = subprocess.run(
        cmd, check=False, capture_output=True, text=True, timeout=600, cwd=REPO, env=ray_head["env"]
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "succeeded" in result.stdout + result.stderr
    return result


@pytest.mark.slow
def test_ray_job_submit_mass_sample(ray_head, tiny_checkpoint, formulas_file, tmp_path):
    out = tmp_path / "out"
    args = ["--checkpoint", tiny_checkpoint, "--compositions", formulas_file, "--num-samples", 30,
            "--unit-size", 10, "--replicas", 2, "--out", out]  # fmt: skip
    submit_mass_sample(ray_head, *args)
    table = ds.dataset(out / "data", format="parquet").to_table()
    assert table.num_rows == 30 and len(set(table.column("sample_id").to_pylist())) == 30


@pytest.mark.slow
@pytest.mark.needs_shared
def test_readme_cluster_command_finds_data_from_the_working_dir_copy(ray_head, tmp_path):
    """The README's `ray job submit --working-dir . -- python jobs/mass_sample.py ...` from the
    repository root, defaults only: shipped checkpoint, Perov-5 test compositions found without
    any data path set (the job runs a copy of the repository that has no ../shared)."""
    out = tmp_path / "out"
    submit_mass_sample(ray_head, "--num-samples", 6, "--unit-size", 3, "--out", out)
    table = ds.dataset(out / "data", format="parquet").to_table()
    assert table.num_rows == 6 and len(set(table.column("sample_id").to_pylist())) == 6
    # the first Perov-5 test compositions, in order
    first = pd.read_csv(dataset_file("perov_5", "test"), usecols=["material_id"], nrows=6)
    assert sorted(table.column("source_id").to_pylist()) == sorted(first["material_id"].astype(str))


@pytest.mark.slow
def test_a_relative_out_in_a_submitted_job_is_refused(ray_head):
    """With --working-dir the job runs in a temporary copy of the directory: a relative --out
    would be written there and lost, so the job refuses it with one line saying why."""
    job = ["python", "jobs/mass_sample.py", "--num-samples", "2", "--out", "outputs/lost"]
    cmd = ["ray", "job", "submit", "--address", ray_head["address"], "--working-dir", ".", "--",
           *job]  # fmt: skip
    result = subprocess.run(
        cmd, check=False, capture_output=True, text=True, timeout=600, cwd=REPO, env=ray_head["env"]
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "failed" in output
    assert "mass_sample: error: --out outputs/lost is relative, and this job runs in a " \
        "temporary copy" in output  # fmt: skip
    assert not (REPO / "outputs" / "lost").exists()
