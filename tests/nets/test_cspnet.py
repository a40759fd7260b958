"""crysray.nets.cspnet via the CrysBFN denoiser: graph, symmetries, split edge layer.

Spec: docs C4, C8.8.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from crysray.methods.crysbfn import CrysBFN
from crysray.methods.registry import load_config
from crysray.methods.torus import wrap
from crysray.nets.cspnet import fourier_features, fully_connected_edges

SIZES = [2, 5, 7]
TOL = 1e-9


@pytest.fixture(scope="module")
def model():
    config = load_config(
        "crysbfn_perov5", ["net.hidden_dim=32", "net.num_layers=2", "net.num_freqs=8"]
    ).replace("data", lattice_std=2.0)
    torch.manual_seed(0)
    model = CrysBFN(config).double().eval()
    # LayerNorm starts at weight 1 / bias 0 and Linear biases are small: randomise so no
    # symmetry can hold by accident of the initialisation
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(1)
    num_atoms = torch.tensor(SIZES)
    n = int(num_atoms.sum())
    return {
        "atom_types": torch.randint(1, 101, (n,), generator=g),
        "m": torch.rand(n, 3, generator=g, dtype=torch.float64) * 2 * math.pi - math.pi,
        "u": torch.rand(n, 3, generator=g, dtype=torch.float64),
        "t": torch.rand(len(SIZES), generator=g, dtype=torch.float64),
        "lattice": torch.randn(len(SIZES), 3, 3, generator=g, dtype=torch.float64),
        "num_atoms": num_atoms,
    }


def _run(model, d):
    with torch.no_grad():
        return model.denoiser(
            d["atom_types"], d["m"], d["u"], d["t"], d["lattice"], d["num_atoms"]
        )[:2]


def _offsets():
    return [sum(SIZES[:b]) for b in range(len(SIZES))]


def _random_rotation(g, proper: bool) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    if not proper:
        q = q @ torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))
    return q


def test_outputs_are_finite_and_shaped(model, inputs):
    x_hat, lattice_hat = _run(model, inputs)
    assert x_hat.shape == (sum(SIZES), 3) and lattice_hat.shape == (len(SIZES), 3, 3)
    assert x_hat.dtype == lattice_hat.dtype == torch.float64
    assert bool(torch.isfinite(x_hat).all()) and bool(torch.isfinite(lattice_hat).all())
    assert bool((x_hat >= -math.pi).all()) and bool((x_hat < math.pi).all())
    # the network does something: x_hat is not just m, L_hat not just L
    assert float(wrap(x_hat - inputs["m"]).abs().max()) > 1e-2


def test_permutation_equivariance(model, inputs):
    x_hat, lattice_hat = _run(model, inputs)
    g = torch.Generator().manual_seed(2)
    perm = torch.cat([off + torch.randperm(n, generator=g) for off, n in zip(_offsets(), SIZES)])
    assert not torch.equal(perm, torch.arange(perm.numel()))
    permuted = dict(inputs)
    for key in ("atom_types", "m", "u"):
        permuted[key] = inputs[key][perm]
    x_perm, lattice_perm = _run(model, permuted)
    assert torch.allclose(x_perm, x_hat[perm], rtol=0, atol=TOL)
    assert torch.allclose(lattice_perm, lattice_hat, rtol=0, atol=TOL)


@pytest.mark.parametrize("crystal", [0, 2])
def test_periodic_translation_equivariance(model, inputs, crystal):
    x_hat, lattice_hat = _run(model, inputs)
    g = torch.Generator().manual_seed(3 + crystal)
    shift = torch.zeros_like(inputs["m"])
    rows = slice(_offsets()[crystal], _offsets()[crystal] + SIZES[crystal])
    s = torch.rand(3, generator=g, dtype=torch.float64) * 20 - 10
    shift[rows] = s
    moved = dict(inputs, m=wrap(inputs["m"] + shift))
    x_moved, lattice_moved = _run(model, moved)
    assert float(wrap(x_moved - x_hat - shift).abs().max()) < TOL
    assert torch.allclose(lattice_moved, lattice_hat, rtol=0, atol=TOL)
    # a translation by a whole period is the identity
    for k in (1, -3):
        same = dict(inputs, m=wrap(inputs["m"] + 2 * math.pi * k))
        x_same, lattice_same = _run(model, same)
        assert float(wrap(x_same - x_hat).abs().max()) < TOL
        assert torch.allclose(lattice_same, lattice_hat, rtol=0, atol=TOL)


def test_translation_by_unwrapped_angles(model, inputs):
    """m is an angle: m and m + 2 pi k give the same prediction even without wrapping."""
    x_hat, lattice_hat = _run(model, inputs)
    g = torch.Generator().manual_seed(5)
    k = torch.randint(-3, 4, inputs["m"].shape, generator=g).double()
    x_k, lattice_k = _run(model, dict(inputs, m=inputs["m"] + 2 * math.pi * k))
    assert float(wrap(x_k - x_hat).abs().max()) < TOL
    assert torch.allclose(lattice_k, lattice_hat, rtol=0, atol=TOL)


@pytest.mark.parametrize("proper", [True, False])
def test_rotation_of_cartesian_frame(model, inputs, proper):
    x_hat, lattice_hat = _run(model, inputs)
    g = torch.Generator().manual_seed(6)
    rotations = torch.stack([_random_rotation(g, proper) for _ in SIZES])
    expected_det = 1.0 if proper else -1.0
    assert torch.allclose(
        torch.linalg.det(rotations), torch.full((3,), expected_det, dtype=torch.float64)
    )
    rotated = dict(inputs, lattice=inputs["lattice"] @ rotations.transpose(1, 2))
    x_rot, lattice_rot = _run(model, rotated)
    assert torch.allclose(x_rot, x_hat, rtol=0, atol=TOL)
    assert torch.allclose(lattice_rot, lattice_hat @ rotations.transpose(1, 2), rtol=0, atol=TOL)
    assert not torch.allclose(lattice_rot, lattice_hat, atol=1e-3)  # L_hat really rotated


def test_lattice_shape_matters(model, inputs):
    """Invariance is only to rotations: a shear of the lattice changes x_hat."""
    x_hat, _ = _run(model, inputs)
    shear = torch.eye(3, dtype=torch.float64)
    shear[0, 1] = 0.5
    x_shear, _ = _run(model, dict(inputs, lattice=inputs["lattice"] @ shear))
    assert float((x_shear - x_hat).abs().max()) > 1e-6


def test_crystals_do_not_interact(model, inputs):
    x_hat, lattice_hat = _run(model, inputs)
    g = torch.Generator().manual_seed(7)
    rows = slice(_offsets()[1], _offsets()[1] + SIZES[1])
    changed = {k: v.clone() for k, v in inputs.items()}
    changed["atom_types"][rows] = torch.randint(1, 101, (SIZES[1],), generator=g)
    changed["m"][rows] = torch.rand(SIZES[1], 3, generator=g, dtype=torch.float64) * 6 - 3
    changed["u"][rows] = torch.rand(SIZES[1], 3, generator=g, dtype=torch.float64)
    changed["t"][1] = 0.9
    changed["lattice"][1] = torch.randn(3, 3, generator=g, dtype=torch.float64)
    x_new, lattice_new = _run(model, changed)
    others = torch.ones(sum(SIZES), dtype=torch.bool)
    others[rows] = False
    assert torch.allclose(x_new[others], x_hat[others], rtol=0, atol=1e-12)
    assert torch.allclose(lattice_new[[0, 2]], lattice_hat[[0, 2]], rtol=0, atol=1e-12)
    assert float((x_new[rows] - x_hat[rows]).abs().max()) > 1e-3  # crystal 1 did change
    # and a crystal alone gives the same output as inside the batch
    alone = {
        "atom_types": inputs["atom_types"][rows],
        "m": inputs["m"][rows],
        "u": inputs["u"][rows],
        "t": inputs["t"][1:2],
        "lattice": inputs["lattice"][1:2],
        "num_atoms": inputs["num_atoms"][1:2],
    }
    x_alone, lattice_alone = _run(model, alone)
    assert torch.allclose(x_alone, x_hat[rows], rtol=0, atol=1e-12)
    assert torch.allclose(lattice_alone, lattice_hat[1:2], rtol=0, atol=1e-12)


@pytest.mark.parametrize("sizes", [[2, 5, 7], [1], [3, 1, 4, 1]])
def test_fully_connected_edges(sizes):
    num_atoms = torch.tensor(sizes)
    src, dst, edge_crystal = fully_connected_edges(num_atoms)
    assert src.dtype == dst.dtype == edge_crystal.dtype == torch.long
    assert src.numel() == sum(n * n for n in sizes)
    expected, crystals = [], []
    offset = 0
    for b, n in enumerate(sizes):
        expected += [(offset + i, offset + j) for i in range(n) for j in range(n)]
        crystals += [b] * (n * n)
        offset += n
    edges = list(zip(src.tolist(), dst.tolist()))
    assert edges == expected  # every ordered pair once, self-loops included, grouped by src
    assert edge_crystal.tolist() == crystals
    batch_idx = torch.repeat_interleave(torch.arange(len(sizes)), num_atoms)
    assert torch.equal(batch_idx[src], edge_crystal) and torch.equal(batch_idx[dst], edge_crystal)
    assert torch.equal(torch.bincount(src), num_atoms[batch_idx])  # n_b edges out of each atom


def test_fourier_features_layout():
    g = torch.Generator().manual_seed(8)
    d = torch.rand(11, 3, generator=g, dtype=torch.float64) - 0.5
    k_max = 5
    psi = fourier_features(d, k_max)
    assert psi.shape == (11, 6 * k_max)
    cols = []
    for axis in range(3):
        cols += [torch.sin(2 * math.pi * k * d[:, axis]) for k in range(k_max)]
        cols += [torch.cos(2 * math.pi * k * d[:, axis]) for k in range(k_max)]
    assert torch.allclose(psi, torch.stack(cols, dim=1), rtol=0, atol=1e-12)
    assert torch.allclose(fourier_features(d + 1.0, k_max), psi, rtol=0, atol=1e-12)  # periodic


@pytest.mark.parametrize("layer_index", [0, 1])
def test_split_edge_layer_equals_unsplit_linear(model, inputs, layer_index):
    """silu(Linear([h_i, h_j, vec(L L^T), psi_ij])) with one concatenated weight matrix equals
    what the layer feeds to its second edge Linear (docs C8.8)."""
    backbone = model.denoiser.backbone
    layer = backbone.layers[layer_index]
    hidden = layer.norm.normalized_shape[0]
    captured = {}

    def before_layer(module, args):
        captured["h"] = args[0]

    def before_edge_out(module, args):
        captured["edge_in"] = args[0]

    hooks = [
        layer.register_forward_pre_hook(before_layer),
        layer.edge_out.register_forward_pre_hook(before_edge_out),
    ]
    try:
        _run(model, inputs)
    finally:
        for hook in hooks:
            hook.remove()

    src, dst, edge_crystal = fully_connected_edges(inputs["num_atoms"])
    h_bar = layer.norm(captured["h"])
    lattice = inputs["lattice"]
    gram = (lattice @ lattice.transpose(1, 2)).reshape(-1, 9)
    delta = wrap(inputs["m"][dst] - inputs["m"][src])  # Delta_ij = wrap(m_j - m_i), docs C4
    k = torch.arange(backbone.num_freqs, dtype=torch.float64)
    phase = delta.unsqueeze(-1) * k  # (E, 3, K)
    psi = torch.cat([phase.sin(), phase.cos()], dim=-1).flatten(1)

    with torch.no_grad():
        w_node, b_node = layer.node_to_edge.weight, layer.node_to_edge.bias
        w_psi = backbone.psi_to_edges.weight[layer_index * hidden : (layer_index + 1) * hidden]
        weight = torch.cat(
            [w_node[:hidden], w_node[hidden:], layer.gram_to_edge.weight, w_psi], dim=1
        )
        bias = b_node[:hidden] + b_node[hidden:]
        unsplit = nn.functional.linear(
            torch.cat([h_bar[src], h_bar[dst], gram[edge_crystal], psi], dim=1), weight, bias
        )
    assert weight.shape == (hidden, 2 * hidden + 9 + 6 * backbone.num_freqs)
    assert captured["edge_in"].shape == unsplit.shape
    assert torch.allclose(captured["edge_in"], nn.functional.silu(unsplit), rtol=0, atol=TOL)


def test_uniform_size_fast_path_equals_ragged_path(monkeypatch):
    """Batches of equal-size crystals take the broadcast path; it must equal the gather path."""
    from crysray.nets import cspnet

    torch.manual_seed(3)
    net = cspnet.CSPNet(hidden=16, num_layers=2, num_freqs=4).double()
    num_atoms = torch.tensor([4, 4, 4])
    h = torch.randn(12, 16, dtype=torch.float64)
    frac = torch.rand(12, 3, dtype=torch.float64)
    lattice = torch.randn(3, 3, 3, dtype=torch.float64)
    assert isinstance(cspnet.crystal_graph(num_atoms), cspnet.UniformGraph)
    gram = cspnet.lattice_gram(lattice)
    fast = net(h, frac, gram, num_atoms)
    monkeypatch.setattr(cspnet, "crystal_graph", cspnet.RaggedGraph)
    slow = net(h, frac, gram, num_atoms)
    assert torch.allclose(fast, slow, rtol=0, atol=1e-12)
