"""Fixtures of the campaign tests: the real shared M3GNet potential, the MP elemental
references and a local hull of the first rows of the MP-20 pilot train split."""

from __future__ import annotations

import warnings

import pandas as pd
import pytest

from crysray.data.csv import dataset_path
from crysray.filter.energy import load_elemental_references
from crysray.filter.local_hull import LocalHull
from crysray.filter.potential import default_model_path, load_potential


@pytest.fixture(scope="session")
def potential(shared_data):
    warnings.filterwarnings("ignore", message=".*set_calculator.*")
    return load_potential(default_model_path().parent / "M3GNet-MP-2021.2.8-PES", device="cpu")


@pytest.fixture(scope="session")
def references(shared_data):
    return load_elemental_references()


@pytest.fixture(scope="session")
def small_hull(tmp_path_factory, shared_data):
    frame = pd.read_csv(dataset_path("mp_20_pilot", "train"), nrows=40)
    path = tmp_path_factory.mktemp("hull-data") / "train_head.csv"
    frame.to_csv(path, index=False)
    return LocalHull.build([path], cache_dir=tmp_path_factory.mktemp("hull-cache"))
