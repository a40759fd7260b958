"""crysray.methods.crysbfn: loss, gradients and end-back sampling (docs/methods.md C2-C4)."""

from __future__ import annotations

import math

import pytest
import torch

from crysray.methods.crysbfn import CrysBFN
from crysray.methods.registry import load_config
from crysray.methods.torus import frac_to_angle, wrap
from crysray.types import CrystalBatch

NET = ["net.hidden_dim=32", "net.num_layers=2", "net.num_freqs=8"]
LATTICE_STD = 2.0


def _model(train_steps=(10,), seed=0, extra=()) -> CrysBFN:
    overrides = NET + [f"method.train_steps={list(train_steps)}", "method.noise_bank_size=4096"]
    overrides += list(extra)
    config = load_config("crysbfn_perov5", overrides).replace("data", lattice_std=LATTICE_STD)
    torch.manual_seed(seed)
    return CrysBFN(config)


def _dng_model(rollout_prob=0.0) -> CrysBFN:
    """A DNG model whose vocabulary holds the atom types of ``batch``."""
    config = _model().config.replace("method", task="dng", rollout_prob=rollout_prob)
    torch.manual_seed(0)
    return CrysBFN(config.replace("data", atom_types=(1, 6, 7, 8, 22, 29, 38)))


@pytest.fixture(scope="module")
def model() -> CrysBFN:
    return _model()


@pytest.fixture(scope="module")
def batch() -> CrystalBatch:
    g = torch.Generator().manual_seed(0)
    num_atoms = torch.tensor([2, 5, 7])
    n = int(num_atoms.sum())
    lattice = 4.0 * torch.eye(3) + 0.5 * torch.randn(3, 3, 3, generator=g)
    return CrystalBatch(
        frac_coords=torch.rand(n, 3, generator=g),
        lattice=lattice,
        atom_types=torch.tensor([8, 22, 8, 8, 8, 38, 22, 1, 6, 6, 7, 8, 8, 29]),
        num_atoms=num_atoms,
    )


class Capture:
    """Forward hook on the denoiser: keeps inputs and outputs of every call."""

    def __init__(self, module, retain_grad=False):
        self.calls = []
        self.retain_grad = retain_grad
        self.handle = module.register_forward_hook(self)

    def __call__(self, module, args, output):
        if self.retain_grad:
            for tensor in output:
                if tensor is not None:  # the type logits of a CSP model are None
                    tensor.retain_grad()
        self.calls.append((args, output))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def _run_loss(model, batch, seed):
    model.zero_grad(set_to_none=True)
    with Capture(model.denoiser, retain_grad=True) as capture:
        loss, metrics = model.loss(batch, torch.Generator().manual_seed(seed))
    loss.backward()
    ((args, (x_hat, lattice_hat, _)),) = capture.calls
    return loss, metrics, args, x_hat, lattice_hat


def test_loss_is_finite_and_consistent(model, batch):
    loss, metrics = model.loss(batch, torch.Generator().manual_seed(1))
    assert loss.shape == () and loss.requires_grad and bool(torch.isfinite(loss))
    assert set(metrics) == {"loss", "coord_loss", "lattice_loss", "steps"}
    assert metrics["steps"] == 10
    assert metrics["loss"] == pytest.approx(
        metrics["coord_loss"] + metrics["lattice_loss"], rel=1e-6
    )
    assert metrics["coord_loss"] > 0 and metrics["lattice_loss"] > 0
    again, _ = model.loss(batch, torch.Generator().manual_seed(1))
    assert torch.equal(loss, again)  # deterministic given the generator
    other, _ = model.loss(batch, torch.Generator().manual_seed(2))
    assert not torch.equal(loss, other)


def test_gradient_reaches_every_used_parameter(model, batch):
    _, _, args, _, _ = _run_loss(model, batch, seed=3)
    t = args[3]
    assert bool((t > 0).any()), "need a crystal past step 1 so the lattice path is live"
    denoiser = model.denoiser
    params = dict(denoiser.named_parameters())
    assert {name for name, _ in model.named_parameters()} == {f"denoiser.{n}" for n in params}
    # Structurally zero gradients, and nothing else:
    # * embedding rows of atomic numbers absent from the batch;
    # * psi_to_edges columns of the k = 0 sine features, which are identically zero.
    present = torch.zeros(denoiser.type_input.num_embeddings, dtype=torch.bool)
    present[batch.atom_types.unique()] = True
    num_freqs = denoiser.backbone.num_freqs
    sine_k0 = torch.zeros(6 * num_freqs, dtype=torch.bool)
    sine_k0[[axis * 2 * num_freqs for axis in range(3)]] = True
    for name, p in params.items():
        assert p.grad is not None, name
        assert bool(torch.isfinite(p.grad).all()), name
        grad = p.grad
        if name == "type_input.weight":
            assert bool((grad[~present] == 0).all())
            assert bool((grad[present].abs().sum(1) > 0).all())
        elif name == "backbone.psi_to_edges.weight":
            assert bool((grad[:, sine_k0] == 0).all())
            assert bool((grad[:, ~sine_k0] != 0).all())
        else:
            assert bool((grad != 0).all()), f"{name}: {int((grad == 0).sum())} zero entries"


def test_coordinate_loss_gradient(model, batch):
    _, metrics, args, x_hat, lattice_hat = _run_loss(model, batch, seed=4)
    steps = metrics["steps"]
    t = args[3]
    step = torch.round(t * steps).long() + 1  # t = (i - 1) / N
    _, weights, _ = model.coord_flow.tables(steps)
    w = weights[step - 1][batch.batch_idx].unsqueeze(-1)  # (n_atoms, 1)
    x = frac_to_angle(batch.frac_coords)
    count = x.numel()  # the loss is a mean over atoms x 3
    expected = 2 * w * wrap(x_hat.detach() - x) / count
    assert torch.allclose(x_hat.grad, expected, rtol=1e-5, atol=1e-7 * float(expected.abs().max()))
    # the recorded coordinate loss is the same formula
    coord = (w * wrap(x - x_hat.detach()) ** 2).mean()
    assert metrics["coord_loss"] == pytest.approx(float(coord), rel=1e-5)
    # lattice: d/dL_hat of mean_{B x 9} w_i (L_hat - L / s)^2
    target = batch.lattice / LATTICE_STD
    w_lat = model.lattice_flow.loss_weight(step.float(), steps).view(-1, 1, 1)
    expected_lat = 2 * w_lat * (lattice_hat.detach() - target) / target.numel()
    assert torch.allclose(
        lattice_hat.grad, expected_lat, rtol=1e-5, atol=1e-7 * float(expected_lat.abs().max())
    )


def test_lattice_prediction_is_zero_for_zero_lattice(model, batch):
    g = torch.Generator().manual_seed(5)
    n = int(batch.num_atoms.sum())
    with torch.no_grad():
        _, lattice_hat, _ = model.denoiser(
            batch.atom_types,
            torch.rand(n, 3, generator=g) * 2 * math.pi - math.pi,
            torch.rand(n, 3, generator=g),
            torch.rand(3, generator=g),
            torch.zeros(3, 3, 3),
            batch.num_atoms,
        )
    assert torch.equal(lattice_hat, torch.zeros(3, 3, 3))


def test_first_step_of_loss_sees_prior_and_predicts_zero_lattice(batch):
    """N = 1: every crystal is at i = 1, where the input is the prior (docs C2, C3)."""
    model = _model(train_steps=(1,))
    with Capture(model.denoiser) as capture:
        _, metrics = model.loss(batch, torch.Generator().manual_seed(6))
    ((args, (_x_hat, lattice_hat, _)),) = capture.calls
    _, _m, u, t, lattice_in, _ = args
    assert torch.equal(t, torch.zeros(3))
    assert torch.equal(u, torch.zeros_like(u))
    assert torch.equal(lattice_in, torch.zeros(3, 3, 3))
    assert torch.equal(lattice_hat, torch.zeros(3, 3, 3))
    # L_hat = 0, so the lattice loss is w_1 * mean(L~^2) with w_1 = N (1 - s^(2/N)) / (2 s^(2/N))
    s = model.config.method.sigma1_lattice
    w1 = (1 - s**2) / (2 * s**2)
    expected = w1 * float(((batch.lattice / LATTICE_STD) ** 2).mean())
    assert metrics["lattice_loss"] == pytest.approx(expected, rel=1e-5)


def test_sample_first_step_is_prior(model, batch):
    with Capture(model.denoiser) as capture:
        model.sample(batch, 4, torch.Generator().manual_seed(7))
    assert len(capture.calls) == 4
    (_, m, u, t, lattice_in, _), (_, lattice_hat, _) = capture.calls[0]
    assert torch.equal(t, torch.zeros(3)) and torch.equal(u, torch.zeros_like(u))
    assert torch.equal(lattice_in, torch.zeros(3, 3, 3))
    assert torch.equal(lattice_hat, torch.zeros(3, 3, 3))
    assert bool((m >= -math.pi).all()) and bool((m < math.pi).all())
    # later steps: t = (i - 1) / N and concentrations u > 0
    for i, (args, _) in enumerate(capture.calls[1:], start=2):
        assert torch.allclose(args[3], torch.full((3,), (i - 1) / 4))
        assert bool((args[2] > 0).all())


def test_sample_outputs(model, batch):
    spec = batch.replace(
        frac_coords=torch.zeros_like(batch.frac_coords), lattice=torch.zeros(3, 3, 3)
    )
    out = model.sample(spec, 5, torch.Generator().manual_seed(8))
    assert out.frac_coords.shape == batch.frac_coords.shape and out.lattice.shape == (3, 3, 3)
    assert out.frac_coords.dtype == out.lattice.dtype == torch.float32
    assert bool((out.frac_coords >= 0).all()) and bool((out.frac_coords < 1).all())
    assert bool(torch.isfinite(out.lattice).all()) and float(out.lattice.abs().max()) > 0
    assert torch.equal(out.atom_types, batch.atom_types)
    assert torch.equal(out.num_atoms, batch.num_atoms)


def test_sample_is_reproducible(model, batch):
    a = model.sample(batch, 5, torch.Generator().manual_seed(9))
    b = model.sample(batch, 5, torch.Generator().manual_seed(9))
    c = model.sample(batch, 5, torch.Generator().manual_seed(10))
    assert torch.equal(a.frac_coords, b.frac_coords) and torch.equal(a.lattice, b.lattice)
    assert not torch.allclose(a.frac_coords, c.frac_coords)
    assert not torch.allclose(a.lattice, c.lattice)
    # an integral float is the same N
    d = model.sample(batch, 5.0, torch.Generator().manual_seed(9))
    assert torch.equal(a.frac_coords, d.frac_coords) and torch.equal(a.lattice, d.lattice)


@pytest.mark.parametrize("steps", [0, -3, 2.5, 0.5, "10"])
def test_sample_rejects_bad_steps(model, batch, steps):
    with pytest.raises(ValueError, match=r"number of steps must be an integer >= 1, got"):
        model.sample(batch, steps)


def test_constructor_rejects_bad_config():
    config = load_config("crysbfn_perov5", NET)
    with pytest.raises(ValueError, match="lattice_std must be set"):
        CrysBFN(config)  # lattice_std = 0: not computed from the training split
    scaled = config.replace("data", lattice_std=1.0)
    with pytest.raises(ValueError, match="unknown task 'dnp'"):
        CrysBFN(scaled.replace("method", task="dnp"))
    with pytest.raises(ValueError, match="data.atom_types must be set"):
        CrysBFN(scaled.replace("method", task="dng"))


def test_rollout_feeds_the_models_own_previous_prediction(batch):
    """rollout_prob = 1: theta_{i-1} is centred on the prediction from theta_{i-2}, as in
    end-back sampling; at i = 1 there is no previous step and the truth stays."""
    model = _model()
    model.config = model.config.replace("method", rollout_prob=1.0)
    x = frac_to_angle(batch.frac_coords)
    lattice = batch.lattice / LATTICE_STD
    step = torch.tensor([1, 2, 7])
    with Capture(model.denoiser) as capture:
        centres = model._rollout(
            batch,
            {"frac_coords": x, "lattice": lattice},
            step,
            10,
            torch.Generator().manual_seed(3),
        )
    centre, lattice_centre = centres["frac_coords"], centres["lattice"]
    ((args, (x_prev, lattice_prev, _)),) = capture.calls
    first = batch.batch_idx == 0
    assert torch.equal(centre[first], x[first]) and torch.equal(lattice_centre[0], lattice[0])
    assert torch.equal(centre[~first], x_prev[~first])
    # i = 2 rolls out from the prior at t = 0, whose lattice mean is 0: the prediction is 0,
    # exactly what the sampler centres theta_1's lattice on
    assert torch.equal(args[3], torch.tensor([0.0, 0.0, 0.5]))
    assert torch.equal(lattice_centre[1], torch.zeros(3, 3))
    assert torch.equal(lattice_centre[2], lattice_prev[2])
    assert "atom_types" not in centres  # CSP: the types are given


def test_dng_rollout_centres_the_types_on_the_previous_prediction(batch):
    """DNG with rollout_prob = 1: the type flow of theta_{i-1} is centred on the probabilities
    predicted from theta_{i-2}, as end-back sampling centres it; at i = 1 on the one-hot."""
    model = _dng_model(rollout_prob=1.0)
    vocab = model.fields["atom_types"].vocab
    one_hot = torch.nn.functional.one_hot(vocab.indices(batch.atom_types), len(vocab)).float()
    step = torch.tensor([1, 2, 7])
    clean = {
        "frac_coords": frac_to_angle(batch.frac_coords),
        "lattice": batch.lattice / LATTICE_STD,
        "atom_types": one_hot,
    }
    with Capture(model.denoiser) as capture:
        type_centre = model._rollout(batch, clean, step, 10, torch.Generator().manual_seed(3))[
            "atom_types"
        ]
    ((args, (_, _, logits)),) = capture.calls
    # the rollout pass itself sees a type-flow draw (rows summing to 1), not atomic numbers
    assert args[0].shape == one_hot.shape
    assert torch.allclose(args[0].sum(-1), torch.ones(len(one_hot)))
    first = batch.batch_idx == 0
    assert torch.equal(type_centre[first], one_hot[first])
    assert torch.allclose(type_centre[~first], torch.softmax(logits, -1)[~first])
    loss, metrics = model.loss(batch, torch.Generator().manual_seed(4))
    assert torch.isfinite(loss) and metrics["type_loss"] > 0


def test_coordinate_weight_cap(batch):
    capped = _model(extra=["method.coord_weight_cap=50.0"])  # same weights as plain
    plain = _model()
    g = torch.Generator().manual_seed(11)
    _, m_plain = plain.loss(batch, torch.Generator().manual_seed(11))
    _, m_capped = capped.loss(batch, g)
    assert m_capped["lattice_loss"] == pytest.approx(m_plain["lattice_loss"])
    assert m_capped["coord_loss"] < m_plain["coord_loss"]
