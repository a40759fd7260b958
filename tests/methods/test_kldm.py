"""The KLDM method assembled: network invariances, the velocity edge term, loss, samplers."""

from __future__ import annotations

import math

import pytest
import torch
from support import PEROV_STATS, tiny_config

from crysray.methods import kldm_process as kp
from crysray.methods.kldm import KLDM
from crysray.methods.registry import build_method, load_config
from crysray.nets.cspnet import fully_connected_edges
from crysray.types import CrystalBatch

SIZES = [2, 5, 3]
TOL = 1e-9


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_method(tiny_config("kldm", ["net.num_layers=2"])).double().eval()


@pytest.fixture
def inputs():
    g = torch.Generator().manual_seed(1)
    n, b = sum(SIZES), len(SIZES)
    num_atoms = torch.tensor(SIZES)
    batch_idx = torch.repeat_interleave(torch.arange(b), num_atoms)
    return {
        "atom_types": torch.randint(1, 90, (n,), generator=g),
        "x": 2 * math.pi * torch.rand(n, 3, generator=g, dtype=torch.float64) - math.pi,
        "v": kp.centre(torch.randn(n, 3, generator=g, dtype=torch.float64), batch_idx, b),
        "l6": torch.randn(b, 6, generator=g, dtype=torch.float64),
        "tau": torch.rand(b, generator=g, dtype=torch.float64),
        "num_atoms": num_atoms,
    }


def run(model, d):
    return model.denoiser(d["atom_types"], d["x"], d["v"], d["l6"], d["tau"], d["num_atoms"])[:2]


def per_crystal(x, sizes=SIZES):
    return torch.split(x, sizes)


def test_velocity_output_is_mean_free_per_crystal(model, inputs):
    s_hat, l_out = run(model, inputs)
    assert s_hat.shape == (sum(SIZES), 3) and l_out.shape == (len(SIZES), 6)
    for part in per_crystal(s_hat):
        assert torch.allclose(part.mean(0), torch.zeros(3, dtype=torch.float64), atol=1e-12)


def test_permutation_equivariance(model, inputs):
    s_hat, l_out = run(model, inputs)
    perm = torch.cat([torch.randperm(n) + off for n, off in zip(SIZES, [0, 2, 7])])
    moved = {k: (v[perm] if k in ("atom_types", "x", "v") else v) for k, v in inputs.items()}
    s_perm, l_perm = run(model, moved)
    assert torch.allclose(s_perm, s_hat[perm], atol=TOL)
    assert torch.allclose(l_perm, l_out, atol=TOL)


def test_periodic_translation_and_image_invariance(model, inputs):
    s_hat, l_out = run(model, inputs)
    shift = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)  # radians, same for all atoms
    images = 2 * math.pi * torch.randint(-2, 3, inputs["x"].shape).double()
    for x in (kp.wrap(inputs["x"] + shift), inputs["x"] + images):
        s_new, l_new = run(model, dict(inputs, x=x))
        assert torch.allclose(s_new, s_hat, atol=TOL)
        assert torch.allclose(l_new, l_out, atol=TOL)


def test_common_velocity_shift_is_invisible_but_relative_velocities_matter(model, inputs):
    s_hat, l_out = run(model, inputs)
    s_shift, l_shift = run(model, dict(inputs, v=inputs["v"] + torch.tensor([0.5, -0.2, 1.0])))
    assert torch.allclose(s_shift, s_hat, atol=TOL) and torch.allclose(l_shift, l_out, atol=TOL)
    v = inputs["v"].clone()
    v[3] += 0.7  # one atom of crystal 1 moves relative to the others
    s_rel, _ = run(model, dict(inputs, v=v))
    changed = (s_rel - s_hat).abs().sum(-1) > 1e-6
    assert changed[2:7].all() and not changed[:2].any() and not changed[7:].any()


def test_velocity_term_equals_the_explicit_edge_projection(model, inputs):
    """The per-node split (+P v_j on dst, -P v_i on src) equals P (v_j - v_i) per edge."""
    layer = model.denoiser.backbone.layers[0]
    captured = {}
    hooks = [
        layer.register_forward_pre_hook(lambda m, a: captured.update(args=a)),
        layer.edge_out.register_forward_pre_hook(lambda m, a: captured.update(edge=a[0])),
    ]
    try:
        run(model, inputs)
    finally:
        for hook in hooks:
            hook.remove()
    h, lattice_features, psi_proj, _, velocities = captured["args"]
    src, dst, edge_crystal = fully_connected_edges(inputs["num_atoms"])
    with torch.no_grad():
        a, b = layer.node_to_edge(layer.norm(h)).chunk(2, dim=-1)
        explicit = (
            a[src]
            + b[dst]
            + layer.gram_to_edge(lattice_features)[edge_crystal]
            + psi_proj
            + layer.velocity_to_edge(velocities[dst] - velocities[src])
        )
    assert torch.allclose(captured["edge"], torch.nn.functional.silu(explicit), atol=1e-10)
    assert torch.allclose(velocities, inputs["v"] / (2 * math.pi))  # the net sees v / 2 pi


def test_loss_is_the_mean_of_two_modalities_and_trains_the_velocity_term():
    config = tiny_config("kldm")
    model = build_method(config)
    g = torch.Generator().manual_seed(0)
    batch = CrystalBatch(
        frac_coords=torch.rand(10, 3),
        lattice=torch.diag_embed(torch.full((2, 3), 4.0)) + 0.1 * torch.randn(2, 3, 3),
        atom_types=torch.tensor([38, 22, 8, 8, 8, 56, 22, 8, 8, 8]),
        num_atoms=torch.tensor([5, 5]),
    )
    loss, metrics = model(batch, g)
    expected = 0.5 * (metrics["coord_loss"] + metrics["lattice_loss"])
    assert math.isclose(metrics["loss"], expected, rel_tol=1e-6)
    loss.backward()
    for layer in model.denoiser.backbone.layers:
        assert layer.velocity_to_edge.weight.grad.abs().sum() > 0


def test_lattice_statistics_come_from_the_training_split_and_are_required():
    from crysray.data.dataset import CrystalTable

    with pytest.raises(ValueError, match="lattice_stats must be set"):
        build_method(load_config("kldm_perov5"))
    table = CrystalTable.from_arrays(
        ["a", "b"],
        [4.0 * torch.eye(3).numpy(), 5.0 * torch.eye(3).numpy()],
        [torch.rand(5, 3).numpy()] * 2,
        [[8] * 5] * 2,
    )
    config = KLDM.fit_config(load_config("kldm_perov5"), table)
    stats = config.method.lattice_stats
    assert math.isclose(stats["pooled_loc"][0], 0.5 * (math.log(4.0) + math.log(5.0)))
    assert KLDM.fit_config(config, None) is config  # filled once, then kept


def test_sampler_options_are_completed_and_checked():
    assert KLDM.sampler_options() == {
        "sampler": "pc",
        "corrector_steps": 1,
        "snr": 0.25,
        "tau_final": 1e-3,
    }
    assert KLDM.sampler_options("em", tau_final="0") == {"sampler": "em", "tau_final": 0.0}
    with pytest.raises(ValueError, match="no sampler 'ode'; choose from pc, em"):
        KLDM.sampler_options("ode")
    with pytest.raises(ValueError, match="has no option corrector_steps"):
        KLDM.sampler_options("em", corrector_steps=2)
    with pytest.raises(ValueError, match="cannot use 'many' as int"):
        KLDM.sampler_options("pc", corrector_steps="many")


@pytest.mark.parametrize(
    ("options", "per_step"),
    [({"sampler": "em"}, 1), ({"sampler": "pc"}, 2), ({"sampler": "pc", "corrector_steps": 3}, 4)],
)
def test_samplers_evaluate_the_network_on_the_grid_before_tau_final(options, per_step):
    model = build_method(tiny_config("kldm"))
    seen = []
    hook = model.denoiser.register_forward_pre_hook(lambda m, a: seen.append(float(a[4][0])))
    spec = CrystalBatch(
        torch.zeros(7, 3), torch.zeros(2, 3, 3), torch.tensor([8] * 7), torch.tensor([3, 4])
    )
    try:
        out = model.sample(spec, 4, torch.Generator().manual_seed(0), tau_final=0.2, **options)
    finally:
        hook.remove()
    grid = [1.0, 0.8, 0.6, 0.4]  # linspace(1, 0.2, 5) without its last point
    assert seen == pytest.approx([tau for tau in grid for _ in range(per_step)])
    assert len(seen) == model.network_evaluations(4, **options) == 4 * per_step
    assert ((out.frac_coords >= 0) & (out.frac_coords < 1)).all()
    assert torch.isfinite(out.lattice).all() and (torch.linalg.det(out.lattice) > 0).all()


def test_sampling_is_reproducible_from_the_generator():
    model = build_method(tiny_config("kldm"))
    spec = CrystalBatch(
        torch.zeros(5, 3), torch.zeros(1, 3, 3), torch.tensor([8] * 5), torch.tensor([5])
    )
    draws = [model.sample(spec, 3, torch.Generator().manual_seed(s)) for s in (0, 0, 1)]
    assert torch.equal(draws[0].frac_coords, draws[1].frac_coords)
    assert not torch.equal(draws[0].frac_coords, draws[2].frac_coords)


def test_bad_sampler_arguments_are_refused():
    model = build_method(tiny_config("kldm"))
    spec = CrystalBatch(
        torch.zeros(5, 3), torch.zeros(1, 3, 3), torch.tensor([8] * 5), torch.tensor([5])
    )
    with pytest.raises(ValueError, match="tau_final must be in"):
        model.sample(spec, 3, tau_final=1.0)
    with pytest.raises(ValueError, match="corrector_steps must be >= 1"):
        model.sample(spec, 3, corrector_steps=0)
    with pytest.raises(ValueError, match="number of steps must be an integer >= 1"):
        model.sample(spec, 0)


def test_lattice_statistics_ride_in_the_config(tmp_path):
    from support import write_tiny_checkpoint

    from crysray.train.checkpoint import load_model

    model = load_model(write_tiny_checkpoint(tmp_path / "k.pt", method="kldm"))
    assert model.config.method.lattice_stats == PEROV_STATS
