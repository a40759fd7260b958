"""The papers' configurations (for GPU users) load, build the papers' network sizes and train."""

from __future__ import annotations

import pytest

from crysray.data.csv import dataset_path, load_split
from crysray.methods.registry import build_method, fit_statistics, load_config
from crysray.train.checkpoint import read_checkpoint
from crysray.train.loop import train

PAPER_CONFIGS = {
    # name: (method, dataset, parameters in millions: the papers' counts where published)
    "crysbfn_mp20_paper": ("crysbfn", "mp_20", (12.0, 12.6)),  # CrysBFN: ~12.3M
    "crysbfn_mpts52_paper": ("crysbfn", "mpts_52", (12.0, 12.6)),
    "crysbfn_carbon24_paper": ("crysbfn", "carbon_24", (12.0, 12.6)),
    "kldm_mp20_paper": ("kldm", "mp_20", (12.0, 16.0)),  # KLDM: ~14-15M (spec's estimate)
    "kldm_mpts52_paper": ("kldm", "mpts_52", (12.0, 16.0)),
}


@pytest.mark.parametrize("name", sorted(PAPER_CONFIGS))
def test_paper_config_trains_a_few_steps_on_cpu(name, tmp_path):
    method, dataset, (low, high) = PAPER_CONFIGS[name]
    config = load_config(name)
    assert (config.method.name, config.data.dataset, config.method.task) == (method, dataset, "csp")
    assert (config.net.hidden_dim, config.net.num_layers, config.net.num_freqs) == (512, 6, 128)
    # the full training splits are downloads; a few steps on MP-20 pilot cells check the rest
    table = load_split(dataset_path("mp_20_pilot", "val")).subset(range(8))
    small = load_config(name, ["train.max_steps=2", "train.checkpoint_every=2",
                               "train.threads=1", "train.batch_size=4"])  # fmt: skip
    small = fit_statistics(small, table)
    parameters = sum(p.numel() for p in build_method(small).parameters()) / 1e6
    assert low <= parameters <= high
    batches = lambda epoch: table.iterate_batches(4, shuffle=True, epoch=epoch)
    result = train(small, batches, tmp_path / "run.pt")
    saved = read_checkpoint(tmp_path / "run.pt")
    assert result["step"] == saved["step"] == 2
    assert saved["config"]["net"]["hidden_dim"] == 512
