"""Structural validity of one crystal (docs/crysbfn.md §6, "struct-valid"), plain numpy.

A crystal is struct-valid when its lattice can be built (finite, non-zero lattice vectors,
volume >= 0.1 A^3) and no two atoms, including periodic images, are closer than 0.5 A.
"""

from __future__ import annotations

import itertools

import numpy as np

MIN_VOLUME = 0.1  # A^3
MIN_DISTANCE = 0.5  # A

# (27, 3) translations {-1, 0, 1}^3 in units of lattice vectors; row 13 is (0, 0, 0).
_IMAGES = np.array(list(itertools.product((-1, 0, 1), repeat=3)), dtype=np.float64)
_HOME = 13


def min_interatomic_distance(lattice: np.ndarray, frac: np.ndarray) -> float:
    """Smallest distance (A) between two atoms or an atom and a periodic image of itself.

    Args:
        lattice: (3, 3) rows are lattice vectors, A.
        frac: (n, 3) fractional coordinates, any range.

    Fractional differences are first folded to the minimum image in [-0.5, 0.5], then the 27
    neighbouring cells are searched; this is exact for reasonably reduced (e.g. Niggli) cells
    and an upper bound on the true minimum for extremely skewed ones.
    """
    n = len(frac)
    diff = frac[:, None, :] - frac[None, :, :]  # (n, n, 3)
    diff = diff - np.round(diff)
    cart = (diff[None] + _IMAGES[:, None, None, :]) @ lattice  # (27, n, n, 3)
    dist = np.linalg.norm(cart, axis=-1)  # (27, n, n)
    # An atom and itself in the home cell is not a pair; its images in the other 26 cells
    # are, which bounds the shortest lattice translation (the only check when n == 1).
    dist[_HOME, np.arange(n), np.arange(n)] = np.inf
    return float(dist.min())


def structure_validity(lattice: np.ndarray, frac: np.ndarray) -> bool:
    """True iff the crystal is struct-valid; never raises (NaN, wrong shapes -> False).

    Args:
        lattice: (3, 3) rows are lattice vectors, A.
        frac: (n, 3) fractional coordinates, n >= 1.
    """
    try:
        lattice = np.asarray(lattice, dtype=np.float64)
        frac = np.asarray(frac, dtype=np.float64)
    except (TypeError, ValueError):
        return False
    if lattice.shape != (3, 3) or frac.ndim != 2 or frac.shape[1] != 3 or len(frac) == 0:
        return False
    with np.errstate(all="ignore"):
        if not (np.isfinite(lattice).all() and np.isfinite(frac).all()):
            return False
        if not (np.linalg.norm(lattice, axis=1) > 0).all():
            return False
        # Written as "not >=" so that a NaN determinant also fails.
        if not abs(np.linalg.det(lattice)) >= MIN_VOLUME:
            return False
        return bool(min_interatomic_distance(lattice, frac) >= MIN_DISTANCE)
