"""What every registered method must do, checked the same way for each: train, checkpoint,
reload weights-only, sample, and go through the Ray sampling job to Parquet."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import torch
from support import tiny_config

from crysray.data.csv import dataset_path, load_split
from crysray.methods.base import GenerativeMethod
from crysray.methods.registry import METHODS, build_method
from crysray.sample.schema import SCHEMA_VERSION, read_samples
from crysray.train.checkpoint import export_inference, load_model
from crysray.train.loop import train


@pytest.fixture(scope="module")
def crystals():
    return load_split(dataset_path("perov_5", "val")).subset(range(8))


@pytest.mark.parametrize("name", sorted(METHODS))
def test_registered_method_is_a_generative_method(name):
    cls = METHODS[name].load()
    assert issubclass(cls, GenerativeMethod) and cls.name == name
    assert cls.default_steps >= 1 and cls.samplers
    assert cls.sampler_options()["sampler"] == next(iter(cls.samplers))
    model = build_method(tiny_config(name))
    assert isinstance(model, torch.nn.Module) and isinstance(model, cls)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(METHODS))
def test_train_checkpoint_reload_sample_and_run_the_job(name, crystals, tmp_path, job):
    config = tiny_config(name, ["train.max_steps=6", "train.checkpoint_every=3", "train.threads=1"])
    result = train(
        config,
        lambda epoch: crystals.iterate_batches(4, shuffle=True, epoch=epoch),
        tmp_path / "c.pt",
    )
    assert result["step"] == 6 and torch.isfinite(torch.tensor(result["loss"]))

    # an inference checkpoint rebuilds the same model from torch.load(weights_only=True)
    export_inference(tmp_path / "c.pt", tmp_path / "model.pt")
    model = load_model(tmp_path / "model.pt")
    payload = torch.load(tmp_path / "model.pt", weights_only=True)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in payload["ema"].items())
    spec = crystals.batch(list(range(3)))
    out = model.sample(spec, 2, torch.Generator().manual_seed(0))
    assert torch.equal(out.atom_types, spec.atom_types)  # CSP keeps the composition
    assert out.frac_coords.shape == spec.frac_coords.shape and out.lattice.shape == (3, 3, 3)
    assert ((out.frac_coords >= 0) & (out.frac_coords < 1)).all()

    # the sampling job runs it without knowing which method it is
    run = tmp_path / "run"
    (tmp_path / "formulas.txt").write_text("SrTiO3\nBaTiO3\n")
    result = job("mass_sample.py", "--checkpoint", tmp_path / "model.pt", "--compositions",
                 tmp_path / "formulas.txt", "--num-samples", 6, "--unit-size", 3, "--steps", 2,
                 "--out", run, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    table = read_samples(sorted((run / "data").glob("unit-*.parquet")))
    assert table.num_rows == 6 and len(set(table["sample_id"].to_pylist())) == 6
    assert set(table["method"].to_pylist()) == {name}
    default = model.sampler_options()
    assert set(table["sampler"].to_pylist()) == {default["sampler"]}
    assert set(table["network_evaluations"].to_pylist()) == {model.network_evaluations(2)}
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["sampler_options"] == default and manifest["steps"] == 2
    meta = pq.read_schema(next((run / "data").glob("unit-*.parquet"))).metadata
    assert meta[b"crysray_schema_version"] == str(SCHEMA_VERSION).encode()
