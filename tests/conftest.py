"""Shared fixtures: a tiny untrained checkpoint, a small composition file, the S3 test server,
one local Ray instance for the jobs of the whole test session, and the ``needs_shared`` skip."""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from support import REPO, run_job, write_tiny_checkpoint

from crysray.resources import ResourceError, shared_dirs

# Datasets and MatGL models come from ../shared next to the checkout (or the folders the
# environment names), the documented way; the tests never download. Without them, a test that
# reads one in this process (its ResourceError), or is marked needs_shared (its jobs read one),
# is skipped with this line.
NO_SHARED = (
    None
    if shared_dirs() or (os.environ.get("CRYSRAY_DATA_DIR") and os.environ.get("CRYSRAY_MATGL_DIR"))
    else "needs ../shared next to the checkout (or $CRYSRAY_DATA_DIR and $CRYSRAY_MATGL_DIR): "
    "the tests run offline"
)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    if NO_SHARED and item.get_closest_marker("needs_shared"):
        pytest.skip(NO_SHARED)
    try:
        return (yield)
    except ResourceError:
        if NO_SHARED:
            pytest.skip(NO_SHARED)
        raise


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    try:
        return (yield)
    except ResourceError:
        if NO_SHARED:
            pytest.skip(NO_SHARED)
        raise


@pytest.fixture(scope="session")
def shared_data():
    """For fixtures that read datasets or MatGL models: skips their tests without them."""
    if NO_SHARED:
        pytest.skip(NO_SHARED)


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    """Tests use small tensors: extra intra-op threads only contend with Ray workers."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Schedules and parsed splits go to a per-session cache, never the user's."""
    old = os.environ.get("CRYSRAY_CACHE")
    os.environ["CRYSRAY_CACHE"] = str(tmp_path_factory.mktemp("crysray-cache"))
    yield
    if old is None:
        os.environ.pop("CRYSRAY_CACHE", None)
    else:
        os.environ["CRYSRAY_CACHE"] = old


@pytest.fixture(scope="session", autouse=True)
def _offline():
    """No test reaches the internet: a missing file fails instead of being downloaded.

    The download tests lift this for their own local HTTP server only.
    """
    old = os.environ.get("CRYSRAY_OFFLINE")
    os.environ["CRYSRAY_OFFLINE"] = "1"
    yield
    if old is None:
        os.environ.pop("CRYSRAY_OFFLINE", None)
    else:
        os.environ["CRYSRAY_OFFLINE"] = old


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


@pytest.fixture(scope="session")
def formulas_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("comp") / "formulas.txt"
    path.write_text("# perovskites and friends\nSrTiO3\nBaTiO3, my-bto\nCa2Ti2O6\nNaCl\n")
    return path


@pytest.fixture(scope="session")
def s3_server():
    from s3_server import S3Server

    with S3Server() as server:
        yield server


@pytest.fixture
def s3_bucket(s3_server, monkeypatch):
    """A fresh bucket on the test's S3 server, which the environment points crysray at."""
    for name, value in s3_server.environment().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    return s3_server.new_bucket()


@pytest.fixture(scope="session")
def ray_address(_private_cache, _offline, s3_server) -> str:
    """The GCS address of one local Ray instance (2 CPUs) started once for the test session.

    Jobs given it (``RAY_ADDRESS``) skip starting a Ray instance of their own, which costs
    seconds each. This process is its first driver, with workers that import this checkout.
    The instance's processes (and so every worker of every job) see the session's cache, the
    offline switch and the S3 test server's endpoint and keys, which the jobs' own environment
    does not pass on to workers. Tests that kill Ray's processes, or need a worker environment
    of their own, start their own instance instead (each job does when not given one).
    """
    ray = pytest.importorskip("ray")
    # Ray's unix socket paths must stay short: not under pytest's deep tmp_path
    temp_dir = tempfile.mkdtemp(prefix="crysray-ray-")
    s3 = s3_server.environment()
    saved = {name: os.environ.get(name) for name in s3}
    os.environ.update(s3)  # inherited by Ray's processes only
    try:
        path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
        # Ray sets RAY_AUTH_MODE here for this process and the jobs it starts: they connect
        # with the machine's Ray token
        context = ray.init(
            address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
            _temp_dir=temp_dir, runtime_env={"env_vars": {"PYTHONPATH": path}},
        )  # fmt: skip
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    try:
        yield context.address_info["gcs_address"]
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture
def job(ray_address):
    """``job("mass_sample.py", *args)``: a job run to the end on the session's Ray instance."""
    return functools.partial(run_job, ray_address=ray_address)
