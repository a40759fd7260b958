"""Small crystal builders shared by the funnel tests."""

from __future__ import annotations

import numpy as np
from pymatgen.core import Lattice, Structure


def rock_salt(a: float) -> Structure:
    """Conventional NaCl cell (8 atoms) with lattice constant ``a`` in A."""
    return Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]
    )


def perturbed(
    structure: Structure, volume_factor: float = 1.05, noise: float = 0.05, seed: int = 0
) -> Structure:
    """A copy at ``volume_factor`` times the volume with Gaussian displacements (A)."""
    s = structure.copy()
    s.scale_lattice(s.volume * volume_factor)
    cart = s.cart_coords + np.random.default_rng(seed).normal(0.0, noise, (len(s), 3))
    return Structure(s.lattice, s.species, cart, coords_are_cartesian=True)


def arrays(structures: list[Structure]):
    """(lattices (B, 3, 3), fracs, atomic numbers) of structures."""
    return (
        np.stack([s.lattice.matrix for s in structures]),
        [s.frac_coords for s in structures],
        [np.array(s.atomic_numbers) for s in structures],
    )
