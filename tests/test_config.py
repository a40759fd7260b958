"""Configs: per-method sections through the registry, versions, and growth without breakage."""

from __future__ import annotations

import pytest
from support import REPO, tiny_config

from crysray.config import CONFIG_VERSION
from crysray.methods.crysbfn_config import CrysBFNConfig
from crysray.methods.kldm_config import KLDMConfig
from crysray.methods.registry import config_from_dict, load_config
from crysray.train.checkpoint import load_model, read_checkpoint, save_checkpoint
from crysray.train.loop import train


def test_method_name_selects_the_section_and_its_keys():
    assert isinstance(load_config("crysbfn_perov5").method, CrysBFNConfig)
    kldm = load_config(
        "crysbfn_perov5", ["method.lattice_parameterization=eps", "method.name=kldm"]
    )
    assert isinstance(kldm.method, KLDMConfig) and kldm.method.lattice_parameterization == "eps"
    assert kldm.net == load_config("crysbfn_perov5").net  # other sections are kept
    with pytest.raises(ValueError, match="unknown config override 'method.beta1_coord=5'"):
        load_config("kldm_perov5", ["method.beta1_coord=5"])
    with pytest.raises(ValueError, match=r"unknown method 'ddpm'; known: \['crysbfn', 'kldm'\]"):
        config_from_dict({"method": {"name": "ddpm"}})


def test_version_one_configs_load_and_compare_equal_once_normalised():
    shipped = read_checkpoint(REPO / "checkpoints" / "crysbfn_perov5.pt")["config"]
    assert "version" not in shipped  # written before per-method sections existed
    config = config_from_dict(shipped)
    assert config.to_dict()["version"] == CONFIG_VERSION
    assert config.method.rollout_prob == 0.5
    older = {
        **shipped,
        "method": {k: v for k, v in shipped["method"].items() if k != "rollout_prob"},
    }
    assert config_from_dict(older).replace("method", rollout_prob=0.5) == config
    assert config_from_dict(config.to_dict()) == config  # round trip
    model = load_model(REPO / "checkpoints" / "crysbfn_perov5.pt")
    assert model.name == "crysbfn" and model.config == config


def test_a_config_from_a_newer_crysray_is_refused():
    with pytest.raises(ValueError, match="config version 3 is newer than this crysray"):
        config_from_dict({"version": CONFIG_VERSION + 1})


def test_a_run_saved_before_a_field_existed_resumes(tmp_path):
    from crysray.data.csv import dataset_path, load_split

    table = load_split(dataset_path("perov_5", "val")).subset(range(16))
    config = tiny_config("crysbfn", ["train.max_steps=2", "train.checkpoint_every=2"])
    batches = lambda epoch: table.iterate_batches(8, shuffle=True, epoch=epoch)
    train(config, batches, tmp_path / "run.pt")
    payload = read_checkpoint(tmp_path / "run.pt")
    # as an older crysray wrote it: no version, no rollout_prob (it defaults to its old value)
    old = payload["config"]
    del old["version"], old["method"]["rollout_prob"]
    save_checkpoint(tmp_path / "run.pt", {k: v for k, v in payload.items() if k != "format"})
    assert train(config.replace("train", max_steps=4), batches, tmp_path / "run.pt")["step"] == 4
    changed = config.replace("train", max_steps=6).replace("method", rollout_prob=0.25)
    with pytest.raises(ValueError, match="different method configuration"):
        train(changed, batches, tmp_path / "run.pt")


def test_configuration_knows_no_method():
    """crysray.config imports nothing of crysray: the registry owns the method sections."""
    import ast
    import inspect

    import crysray.config

    tree = ast.parse(inspect.getsource(crysray.config))
    imported = [
        node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
    ] + [a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names]
    assert not [name for name in imported if name.startswith("crysray")]
