"""Shared fixtures: a tiny untrained checkpoint and a small composition file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from support import write_tiny_checkpoint


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
    from crysray.s3_testing import S3Server

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
