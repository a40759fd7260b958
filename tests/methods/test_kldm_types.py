"""KLDM atom-type variants for DNG: forward processes, inverses, the masking step, sampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from support import DNG_DATA, tiny_config

from crysray.methods.kldm_types import (
    MASK_EPS,
    AnalogBitsTypes,
    MaskedTypes,
    OneHotTypes,
    type_process,
)
from crysray.methods.registry import build_method
from crysray.types import CrystalBatch


@pytest.mark.parametrize("k", [1, 2, 5, 8, 56, 89])
@pytest.mark.parametrize("variant", [OneHotTypes, AnalogBitsTypes])
def test_codes_round_trip_and_the_clean_end_of_the_diffusion_decodes_back(variant, k):
    process = variant(k)
    index = torch.arange(k)
    code = process.encode(index)
    assert code.shape == (k, process.output_dim)
    assert torch.equal(process.decode(code, None), index)
    g = torch.Generator().manual_seed(0)
    almost_clean = process.noisy(index, torch.full((k, 1), 1e-3), g)
    assert torch.equal(process.decode(almost_clean, None), index)
    many = index.repeat(4000 // k + 1)
    noise = process.noisy(many, torch.ones(len(many), 1), g)  # tau = 1: alpha = 0.0066
    assert abs(float(noise.std()) - 1.0) < 0.05 and abs(float(noise.mean())) < 0.05


def test_analog_bits_never_decode_outside_the_vocabulary():
    process = AnalogBitsTypes(5)  # 3 bits: codes 5, 6, 7 do not exist
    every_code = torch.tensor([[b0, b1, b2] for b2 in (-1, 1) for b1 in (-1, 1) for b0 in (-1, 1)])
    decoded = process.decode(every_code.float(), None)
    assert decoded.tolist() == [0, 1, 2, 3, 4, 4, 4, 4]


def test_masking_forward_keeps_tokens_with_probability_alpha():
    process = MaskedTypes(4)
    g = torch.Generator().manual_seed(1)
    index = torch.randint(4, (20000,), generator=g)
    for tau in (1e-3, 0.3, 0.7, 1.0):
        noisy = process.noisy(index, torch.full((20000, 1), tau), g)
        kept = noisy != 4
        assert torch.equal(noisy[kept], index[kept])  # a kept token is never changed
        p = (1 - 2 * MASK_EPS) * (1 - tau) + MASK_EPS
        assert stats.binomtest(int(kept.sum()), 20000, p).pvalue > 1e-3


def test_masking_reverse_step_unmasks_at_the_closed_form_rate_and_decode_resolves_all():
    process = MaskedTypes(3)
    g = torch.Generator().manual_seed(2)
    n, tau, tau_next = 20000, torch.tensor([[0.6]]), torch.tensor([[0.4]])
    masked = process.prior(n, g, "cpu")
    logits = torch.log(torch.tensor([[0.2, 0.5, 0.3]])).expand(n, 3)
    after = process.step(masked, logits, tau, tau_next, g, deterministic=False)
    keep, keep_next = process.keep(tau), process.keep(tau_next)
    p_unmask = float((keep_next - keep) / (1 - keep))
    unmasked = after != 3
    assert stats.binomtest(int(unmasked.sum()), n, p_unmask).pvalue > 1e-3
    counts = torch.bincount(after[unmasked], minlength=3).numpy()
    assert stats.chisquare(counts, counts.sum() * np.array([0.2, 0.5, 0.3])).pvalue > 1e-3
    fixed = torch.tensor([0, 1, 2])
    assert torch.equal(process.step(fixed, logits[:3], tau, tau_next, g, False), fixed)
    assert bool((process.decode(after, logits) < 3).all())  # no mask token survives


def test_unknown_variant_is_refused():
    with pytest.raises(ValueError, match="unknown KLDM type variant 'x'"):
        type_process("x", 4)
    with pytest.raises(ValueError, match="masking loss must be"):
        type_process("d", 4, "kl")


@pytest.mark.parametrize("variant", ["c", "c-ab", "d"])
@pytest.mark.parametrize("sampler", ["em", "pc"])
def test_dng_sampling_gives_only_vocabulary_types(variant, sampler):
    config = tiny_config("kldm", ["method.task=dng", f"method.type_variant={variant}"])
    model = build_method(config)
    loss, metrics = model(_crystals(), torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and {"coord_loss", "lattice_loss", "type_loss"} <= set(metrics)
    spec = CrystalBatch(
        torch.zeros(9, 3), torch.zeros(2, 3, 3), torch.zeros(9, dtype=torch.long),
        torch.tensor([4, 5]),
    )  # fmt: skip
    out = model.sample(spec, 6, torch.Generator().manual_seed(1), sampler=sampler)
    assert set(out.atom_types.tolist()) <= set(DNG_DATA["atom_types"])
    assert out.atom_types.shape == (9,) and torch.isfinite(out.lattice).all()


def _crystals():
    return CrystalBatch(
        frac_coords=torch.rand(9, 3),
        lattice=4.0 * torch.eye(3).repeat(2, 1, 1),
        atom_types=torch.tensor([38, 22, 8, 8, 56, 22, 8, 8, 8]),
        num_atoms=torch.tensor([4, 5]),
    )
