"""Device placement: loss, sampling and the training loop never leave a tensor on the wrong device.

There is no GPU here, so two checks stand in for one. Inside ``on_one_device``, tensors created
without an explicit device land on the ``meta`` device (as they would land on the CPU while the
model sits on a GPU), and every torch call fails if its tensor arguments live on more than one
device. Code that draws noise on the default device, builds an index with ``torch.arange(n)``
or keeps a table on the CPU while the model is elsewhere therefore fails here as it would on a
GPU.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from support import tiny_config
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from crysray.methods.crysbfn import CrysBFN
from crysray.methods.flows import GaussianFlow, VonMisesFlow
from crysray.methods.registry import build_method, load_config
from crysray.train.loop import evaluate_loss
from crysray.types import CrystalBatch


class OneDevice(TorchFunctionMode):
    """Fails any torch call whose non-scalar tensor arguments are on different devices."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        devices = {
            t.device
            for t in tree_leaves((args, kwargs))
            if isinstance(t, torch.Tensor) and t.dim() > 0
        }
        if len(devices) > 1:
            raise AssertionError(f"{getattr(func, '__name__', func)} mixes devices {devices}")
        return func(*args, **kwargs)


@contextlib.contextmanager
def on_one_device():
    with torch.device("meta"), OneDevice():
        yield


def _model(overrides=()) -> CrysBFN:
    config = load_config(
        "crysbfn_perov5",
        [
            "net.hidden_dim=16",
            "net.num_layers=1",
            "net.num_freqs=4",
            "net.time_dim=8",
            "method.train_steps=[5]",
            "method.noise_bank_size=512",
            *overrides,
        ],
    )
    return CrysBFN(config.replace("data", lattice_std=2.0))


def _batch() -> CrystalBatch:
    g = torch.Generator().manual_seed(0)
    num_atoms = torch.tensor([2, 3, 3])
    n = int(num_atoms.sum())
    return CrystalBatch(
        torch.rand(n, 3, generator=g),
        4.0 * torch.eye(3).repeat(3, 1, 1),
        torch.tensor([8, 22, 8, 38, 22, 8, 38, 8]),
        num_atoms,
    )


def test_the_check_catches_a_tensor_left_on_the_default_device():
    weights = torch.ones(4)
    with on_one_device(), pytest.raises((AssertionError, RuntimeError)):
        weights + torch.zeros(4)  # no device given: on a GPU this would be a CPU tensor
    with on_one_device(), pytest.raises(AssertionError):
        weights[torch.zeros(2, dtype=torch.long)]  # indexing silently accepts a meta index
    with on_one_device():
        assert torch.equal(weights + torch.zeros(4, device=weights.device), weights)


@pytest.mark.parametrize(
    "overrides", [(), ("method.rollout_prob=0.5", "method.coord_weight_cap=100")]
)
def test_loss_and_sampling_stay_on_the_model_device(overrides):
    model, batch = _model(overrides), _batch()
    generator = torch.Generator(device="cpu").manual_seed(0)
    with on_one_device():
        loss, _ = model.loss(batch, generator)
        loss.backward()
        out = model.sample(batch, 5, generator)
    assert torch.isfinite(loss) and out.frac_coords.shape == batch.frac_coords.shape
    assert out.frac_coords.device.type == "cpu"  # results come back to the host


def test_flow_draws_follow_their_input_device():
    """The noise bank's walks are copied to the device of the centre once and reused."""
    _, _, bank = VonMisesFlow(1e3, bank_size=256).tables(4)
    centre = torch.zeros(6, 3, device="meta")
    m, c = bank.draw(centre, torch.full((1,), 2, device="meta"))
    assert m.device.type == c.device.type == "meta"
    assert bank.on(torch.device("meta"))[0] is bank.on(torch.device("meta"))[0]
    mu = GaussianFlow(0.03).draw(torch.zeros(2, 3, 3, device="meta"), 0.5)
    assert mu.device.type == "meta"


def test_evaluate_loss_moves_host_batches_to_the_model_device():
    model, batch = _model(), _batch()
    with on_one_device():
        value = evaluate_loss(model, [batch])
    assert value > 0


METHOD_CASES = [
    ("crysbfn", ["method.task=dng"], {}),
    ("kldm", [], {"sampler": "em"}),
    ("kldm", [], {"sampler": "pc"}),
    *[
        ("kldm", ["method.task=dng", f"method.type_variant={variant}"], {"sampler": sampler})
        for variant in ("c", "c-ab", "d")
        for sampler in ("em", "pc")
    ],
]


@pytest.mark.parametrize("method, overrides, options", METHOD_CASES)
def test_every_method_task_and_sampler_stays_on_the_model_device(method, overrides, options):
    model, batch = build_method(tiny_config(method, overrides)), _batch()
    generator = torch.Generator(device="cpu").manual_seed(0)
    with on_one_device():
        loss, _ = model.loss(batch, generator)
        loss.backward()
        out = model.sample(batch, 3, generator, **model.sampler_options(**options))
    assert torch.isfinite(loss) and out.frac_coords.shape == batch.frac_coords.shape
    assert out.atom_types.device.type == "cpu"
