"""Fixtures of the funnel tests: the real shared M3GNet potential and a small local hull.

Everything runs single-threaded (the machine is shared with training jobs) and the hull is
built from the first rows of the MP-20 pilot train split, cached in a per-session directory.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch

from crysray.data.csv import dataset_path
from crysray.filter.energy import load_elemental_references
from crysray.filter.local_hull import LocalHull
from crysray.filter.potential import default_model_path, load_potential

REFERENCE_ROWS = 40


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message=".*set_calculator.*")


@pytest.fixture(scope="session")
def shared_matgl(shared_data) -> Path:
    """The folder of the MatGL models (../shared/matgl), with their reference energies."""
    return default_model_path().parent


@pytest.fixture(scope="session")
def potential(shared_matgl):
    return load_potential(shared_matgl / "M3GNet-MP-2021.2.8-PES", device="cpu")


@pytest.fixture(scope="session")
def reference_csv(tmp_path_factory, shared_data) -> Path:
    """The first REFERENCE_ROWS rows of the pilot train split, as their own CSV file."""
    frame = pd.read_csv(dataset_path("mp_20_pilot", "train"), nrows=REFERENCE_ROWS)
    path = tmp_path_factory.mktemp("reference-data") / "train_head.csv"
    frame.to_csv(path, index=False)
    return path


@pytest.fixture(scope="session")
def reference_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("reference-cache")


@pytest.fixture(scope="session")
def hull(reference_csv, reference_cache):
    return LocalHull.build([reference_csv], cache_dir=reference_cache)


@pytest.fixture(scope="session")
def references(shared_data):
    return load_elemental_references()
