"""crysray.filter.relax: batched FIRE with cell relaxation, statuses, agreement with Relaxer."""

from __future__ import annotations

import numpy as np
import pandas as pd
from crystals import arrays, perturbed, rock_salt

from crysray.data.csv import dataset_path
from crysray.filter.relax import relax_batch
from crysray.filter.relax_ase import relax_one_by_one
from crysray.structures import parse_cif


def test_strained_rock_salt_relaxes_to_lower_energy(potential):
    strained = rock_salt(6.2)
    result = relax_batch(potential, *arrays([strained]), fmax=0.02, relax_steps=300)
    start = relax_batch(potential, *arrays([strained]), relax_steps=0)  # evaluation only
    assert result.status == ["converged"]
    assert result.energy[0] < start.energy[0] - 0.5  # eV per 8-atom cell
    a = np.linalg.norm(result.lattice[0], axis=1)
    # The M3GNet-MP minimum is a = 5.69 A (fmax 0.005); the shared README's 5.711 A is where
    # fmax = 0.05 stops on the way down from 5.90 A.
    np.testing.assert_allclose(a, 5.69, atol=0.015)
    assert start.status == ["not_converged"] and start.steps[0] == 0


def test_batched_matches_one_by_one(potential):
    cifs = pd.read_csv(dataset_path("mp_20_pilot", "test"), nrows=40)["cif"]
    small = [s for s in map(parse_cif, cifs) if len(s) <= 6][:4]
    structures = [perturbed(s, seed=k) for k, s in enumerate(small)]
    batched = relax_batch(potential, *arrays(structures), fmax=0.05, relax_steps=200)
    single = relax_one_by_one(structures, potential, fmax=0.05, relax_steps=200)
    n_atoms = np.array([len(s) for s in structures])
    assert batched.status == single.status == ["converged"] * 4
    np.testing.assert_allclose(batched.energy / n_atoms, single.energy / n_atoms, atol=0.01)
    assert (
        batched.energy < relax_batch(potential, *arrays(structures), relax_steps=0).energy
    ).all()
    # Same algorithm, so the same trajectory up to float32 noise in the model.
    assert np.abs(batched.steps - single.steps).max() <= 2


def test_bad_crystals_get_a_status_not_an_exception(potential):
    nacl = rock_salt(5.9)
    lattices = np.stack(
        [
            nacl.lattice.matrix,
            np.eye(3) * 4.0,
            np.full((3, 3), np.nan),
            np.eye(3) * 4.0,
            np.eye(3) * 1e-3,
        ]
    )
    fracs = [
        nacl.frac_coords,
        np.array([[0.1, 0.2, 0.3], [0.1, 0.2, 0.3]]),
        np.zeros((1, 3)),
        np.zeros((1, 3)),
        np.zeros((1, 3)),
    ]
    numbers = [
        np.array(nacl.atomic_numbers),
        np.array([11, 17]),
        np.array([11]),
        np.array([99]),
        np.array([11]),
    ]
    result = relax_batch(potential, lattices, fracs, numbers, fmax=0.05, relax_steps=60)
    # overlapping atoms, NaN cell, element unknown to the model, collapsed cell
    assert result.status == ["converged", "nan", "nan", "unsupported_element", "exploded"]
    assert np.isnan(result.energy[1:]).all() and np.isfinite(result.energy[0])
    alone = relax_batch(potential, lattices[:1], fracs[:1], numbers[:1], fmax=0.05, relax_steps=60)
    # Broken neighbours in the batch do not leak into a healthy crystal.
    assert abs(alone.energy[0] - result.energy[0]) < 1e-4 and alone.steps[0] == result.steps[0]


def test_step_limit_gives_not_converged(potential):
    result = relax_batch(potential, *arrays([rock_salt(6.4)]), fmax=0.05, relax_steps=3)
    assert result.status == ["not_converged"] and result.steps[0] == 3
    assert np.isfinite(result.energy[0])


def test_positions_only_keeps_the_cell(potential):
    s = perturbed(rock_salt(5.8), volume_factor=1.0, noise=0.05)
    result = relax_batch(potential, *arrays([s]), relax_cell=False, fmax=0.05, relax_steps=200)
    assert result.status == ["converged"]
    np.testing.assert_allclose(result.lattice[0], s.lattice.matrix, atol=1e-9)
