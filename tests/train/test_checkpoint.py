"""Checkpoints: weights_only round trip, clear errors for files that do not fit the code."""

from __future__ import annotations

import pytest
import torch
from support import TINY, write_tiny_checkpoint

from crysray.methods.registry import load_config
from crysray.train.checkpoint import (
    CheckpointError,
    export_inference,
    load_model,
    read_checkpoint,
    save_checkpoint,
)
from crysray.train.loop import train


def test_round_trip_with_weights_only(tmp_path):
    path = write_tiny_checkpoint(tmp_path / "a.pt")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    model = load_model(path)
    for name, value in model.state_dict().items():
        assert torch.equal(value, payload["ema"][name])
    assert model.config.net.hidden_dim == 32


def test_weights_from_a_different_configuration_are_refused(tmp_path):
    small = read_checkpoint(write_tiny_checkpoint(tmp_path / "small.pt"))
    big = read_checkpoint(write_tiny_checkpoint(tmp_path / "big.pt", ["net.hidden_dim=48"]))
    save_checkpoint(tmp_path / "mixed.pt", {"config": big["config"], "ema": small["ema"]})
    with pytest.raises(CheckpointError, match="different model configuration.*shape differs"):
        load_model(tmp_path / "mixed.pt")


def test_config_with_unknown_keys_is_refused(tmp_path):
    payload = read_checkpoint(write_tiny_checkpoint(tmp_path / "a.pt"))
    payload["config"]["net"]["attention_heads"] = 8  # written by some other version
    save_checkpoint(tmp_path / "future.pt", payload)
    with pytest.raises(CheckpointError, match="does not match this crysray version"):
        load_model(tmp_path / "future.pt")


@pytest.mark.parametrize("content", [b"not a checkpoint", None])
def test_missing_or_foreign_files_are_refused(tmp_path, content):
    path = tmp_path / "x.pt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match="not found|cannot read"):
        read_checkpoint(path)
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a crysray checkpoint"):
        read_checkpoint(tmp_path / "other.pt")


def test_resume_continues_and_refuses_a_different_model(tmp_path, monkeypatch):
    from crysray.data.csv import dataset_path, load_split

    table = load_split(dataset_path("perov_5", "val")).subset(range(32))
    config = load_config(
        "crysbfn_perov5",
        TINY + ["train.max_steps=4", "train.checkpoint_every=2", "train.threads=1"],
    ).replace("data", lattice_std=2.0)
    batches = lambda epoch: table.iterate_batches(8, shuffle=True, epoch=epoch)
    train(config, batches, tmp_path / "run.pt")
    first = read_checkpoint(tmp_path / "run.pt")
    assert first["step"] == 4 and [h["step"] for h in first["history"]] == [2, 4]
    longer = config.replace("train", max_steps=6)
    assert train(longer, batches, tmp_path / "run.pt")["step"] == 6  # resumed, not restarted
    assert [h["step"] for h in read_checkpoint(tmp_path / "run.pt")["history"]] == [2, 4, 6]
    other = longer.replace("net", hidden_dim=48)
    with pytest.raises(ValueError, match="different net configuration"):
        train(other, batches, tmp_path / "run.pt")
    export_inference(tmp_path / "run.pt", tmp_path / "infer.pt")


def test_resume_continues_where_the_data_left_off(tmp_path):
    """Stopped mid-epoch (step 3) and at an epoch's end (step 4; 4 batches per epoch), the
    resumed runs train on exactly the batches an uninterrupted run trains on, in order."""
    from crysray.data.csv import dataset_path, load_split

    table = load_split(dataset_path("perov_5", "val")).subset(range(32))
    trained: dict[str, list] = {"whole": [], "parts": []}

    def recording(name):  # wrap_model: sees every batch that is trained on
        def wrap(model):
            def step(batch, generator):
                trained[name].append(round(float(batch.frac_coords.sum()), 6))
                return model(batch, generator)

            return step

        return wrap

    batches = lambda epoch: table.iterate_batches(8, shuffle=True, epoch=epoch)
    config = load_config(
        "crysbfn_perov5",
        TINY + ["train.max_steps=10", "train.checkpoint_every=1", "train.threads=1"],
    ).replace("data", lattice_std=2.0)
    train(config, batches, tmp_path / "whole.pt", wrap_model=recording("whole"))
    for stop in (3, 4, 10):
        train(
            config.replace("train", max_steps=stop),
            batches,
            tmp_path / "parts.pt",
            wrap_model=recording("parts"),
        )
        if stop == 3:
            assert (
                read_checkpoint(tmp_path / "parts.pt")["epoch"],
                read_checkpoint(tmp_path / "parts.pt")["batch"],
            ) == (0, 3)
    assert len(trained["whole"]) == 10 and trained["parts"] == trained["whole"]
    assert read_checkpoint(tmp_path / "parts.pt")["epoch"] == 2
