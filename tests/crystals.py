"""Small hand-built crystals shared by the tests (importable as ``crystals``).

Builders rather than fixtures: the tests vary the lattice constant and the species.
"""

from __future__ import annotations

import numpy as np
from pymatgen.core import Lattice, Structure

NACL = ("Na", "Cl")


def rock_salt(a: float, species=NACL) -> Structure:
    """Conventional rock-salt cell (8 atoms) with lattice constant ``a`` in A."""
    return Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(a), list(species), [[0, 0, 0], [0.5, 0.5, 0.5]]
    )


def cesium_chloride_type(a: float, species=NACL) -> Structure:
    """Two atoms: one at the corner and one at the centre of a cube of edge ``a``."""
    return Structure(Lattice.cubic(a), list(species), [[0, 0, 0], [0.5, 0.5, 0.5]])


def perovskite(a: float = 3.905, shift_o: float = 0.0) -> Structure:
    """Cubic SrTiO3; ``shift_o`` moves the first O along x (fractional units)."""
    frac = [[0, 0, 0], [0.5, 0.5, 0.5], [0.5 + shift_o, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]
    return Structure(Lattice.cubic(a), ["Sr", "Ti", "O", "O", "O"], frac)


def rotated_supercell(structure: Structure) -> Structure:
    """The same crystal in a sheared, doubled cell (the same material to StructureMatcher)."""
    s = structure.copy()
    s.make_supercell([[1, 1, 0], [0, 1, 0], [0, 0, 2]])
    return s


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
