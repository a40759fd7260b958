"""Tasks as data: sample specs, per-field processes, and old checkpoints under new names."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from support import tiny_config

from crysray.methods.registry import METHODS, build_method
from crysray.sample.sampler import AtomCount, Composition, spec_batch
from crysray.train.checkpoint import load_weights
from crysray.types import SampleSpec


def test_spec_batch_gives_types_for_compositions_and_none_for_atom_counts():
    csp = spec_batch([Composition("a", np.array([8, 22])), Composition("b", np.array([38]))])
    assert csp.num_atoms.tolist() == [2, 1] and csp.atom_types.tolist() == [8, 22, 38]
    dng = spec_batch([AtomCount(3), AtomCount(5)])
    assert dng.num_atoms.tolist() == [3, 5] and dng.atom_types is None
    with pytest.raises(ValueError, match="mixes compositions"):
        spec_batch([AtomCount(3), Composition("a", np.array([8]))])


@pytest.mark.parametrize("name", sorted(METHODS))
def test_the_task_decides_which_fields_a_method_generates(name):
    csp = build_method(tiny_config(name))
    dng = build_method(tiny_config(name, ["method.task=dng"]))
    assert list(csp.fields) == ["frac_coords", "lattice"]
    assert list(dng.fields) == ["frac_coords", "lattice", "atom_types"]
    with pytest.raises(ValueError, match="the sample spec must hold them"):
        csp.sample(SampleSpec(torch.tensor([2])), 1)  # CSP: the types are given, not generated


@pytest.mark.parametrize("name", sorted(METHODS))
def test_dng_reads_only_the_atom_counts_of_a_spec(name):
    model = build_method(tiny_config(name, ["method.task=dng"]))
    counts = torch.tensor([2, 4])
    plain = model.sample(SampleSpec(counts), 2, torch.Generator().manual_seed(5))
    typed = model.sample(
        SampleSpec(counts, torch.full((6,), 8)), 2, torch.Generator().manual_seed(5)
    )
    assert torch.equal(plain.atom_types, typed.atom_types)
    assert torch.equal(plain.frac_coords, typed.frac_coords)
    assert set(plain.atom_types.tolist()) <= set(model.config.data.atom_types)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_weights_saved_under_the_old_type_embedding_name_load(name):
    model = build_method(tiny_config(name))
    old = {
        k.replace("denoiser.type_input.", "denoiser.type_embedding."): v
        for k, v in model.state_dict().items()
    }
    assert "denoiser.type_embedding.weight" in old  # as the shipped CSP checkpoints hold it
    fresh = build_method(tiny_config(name))
    load_weights(fresh, old, source="old.pt")
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in model.state_dict().items())
