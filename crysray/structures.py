"""The crystal codec: Parquet rows <-> arrays <-> pymatgen ``Structure`` <-> ``CrystalBatch``,
one validity rule, CIF parsing and canonical cells. Every package that turns a crystal from one
form into another uses this module; nothing else builds a ``Structure`` from arrays.

Arrays of one crystal (``CrystalArrays``): ``lattice`` (3, 3) float64, rows are lattice vectors
in Angstrom; ``frac`` (n, 3) float64 fractional coordinates; ``z`` (n,) int64 atomic numbers.
A row of generated crystals (crysray.sample.schema) holds them flattened in the list columns
``lattice`` (9), ``frac_coords`` (3n) and ``atomic_numbers`` (n); relaxed rows hold the relaxed
cell in ``relaxed_lattice`` and ``relaxed_frac_coords``.

Two levels of "good", kept apart on purpose:

- **buildable** (``row_arrays`` is not None and ``buildable``): the arrays have consistent
  shapes, 1 <= Z <= 118, and a finite, non-singular lattice (|det| >= 1e-8 A^3), so a
  ``Structure`` can be made; DNG metrics score such crystals on composition even when their
  geometry is bad.
- **struct-valid** (``structure_validity``): the one validity rule of crysray. CDVAE's rule
  (volume >= 0.1 A^3, no two atoms closer than 0.5 A, periodic images included) plus what
  crysray adds: finite numbers, non-zero lattice vectors and at least one atom. The sample
  rows' ``valid_structure``, the funnel's ``pass_structure`` and the CSP/DNG metrics all use it.

Canonical form (docs/methods.md C1): Niggli-reduce (``get_reduced_structure``, no primitive
search), rebuild the lattice from its parameters with ``Lattice.from_parameters`` so the
orientation is pymatgen's fixed convention, and wrap fractional coordinates into [0, 1).
"""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import torch
from pymatgen.core import DummySpecies, Element, Lattice, Structure

from crysray.types import CrystalBatch

# Below this the cell is treated as degenerate; real crystals are > 1 A^3 per atom.
MIN_PARSE_VOLUME = 1e-6  # A^3
NIGGLI_TOL = 1e-5  # pymatgen's default relative tolerance in get_niggli_reduced_lattice
# A lattice this close to singular cannot be inverted reliably: not buildable.
MIN_BUILD_VOLUME = 1e-8  # A^3
# The validity rule (CDVAE's thresholds)
MIN_VOLUME = 0.1  # A^3
MIN_DISTANCE = 0.5  # A
MAX_Z = 118

CrystalArrays = tuple[np.ndarray, np.ndarray, np.ndarray]  # lattice (3, 3), frac (n, 3), z (n,)

# (27, 3) translations {-1, 0, 1}^3 in units of lattice vectors; row 13 is (0, 0, 0).
_IMAGES = np.array(list(itertools.product((-1, 0, 1), repeat=3)), dtype=np.float64)
_HOME = 13


def wrap_frac(frac: np.ndarray) -> np.ndarray:
    """Wrap fractional coordinates into [0, 1).

    ``np.mod(-1e-17, 1.0)`` is exactly 1.0 in float64, so values that land on 1.0 are set to
    0.0 to keep the half-open interval the networks assume.
    """
    out = np.mod(np.asarray(frac, dtype=np.float64), 1.0)
    out[out >= 1.0] = 0.0
    return out


def canonical_structure(s: Structure) -> Structure:
    """Niggli cell with pymatgen's fixed lattice orientation and frac coords in [0, 1).

    The lattice depends only on the crystal, not on the input's Cartesian frame or on the
    choice of (equal-volume) basis. An addition (docs/methods.md C1): Niggli cells with a
    right angle are made all-obtuse (see ``_obtuse_when_ambiguous``), otherwise rounding noise
    picks between two valid Niggli cells.
    """
    reduced = s.get_reduced_structure()
    matrix, frac = _obtuse_when_ambiguous(reduced.lattice.matrix, reduced.frac_coords)
    # from_parameters discards the rotation: only lengths and angles survive.
    lattice = Lattice.from_parameters(*Lattice(matrix).parameters)
    return Structure(lattice, reduced.species, wrap_frac(frac))


def _obtuse_when_ambiguous(
    matrix: np.ndarray, frac: np.ndarray, tol: float = NIGGLI_TOL
) -> tuple[np.ndarray, np.ndarray]:
    """Resolve the sign ambiguity of Niggli cells that have a right angle.

    If some angle is 90 degrees within the Niggli tolerance, both the all-acute (type I) and
    the all-obtuse (type II) form satisfy the Niggli conditions, and float noise in the input
    (a rotated frame, another basis) decides which one pymatgen returns. Negating two basis
    vectors (a proper change of basis, volume unchanged) flips the sign of two of the three
    cosines; pick the first such flip that makes the cell all-obtuse, so the choice is fixed.

    Args:
        matrix: (3, 3) Niggli-reduced lattice, rows are vectors, A.
        frac: (n, 3) fractional coordinates in that basis.
    """
    eps = tol * abs(np.linalg.det(matrix)) ** (1 / 3)  # as pymatgen's Niggli reduction
    # dots[i] = 2 v_j . v_k for the pair of vectors other than i (xi, eta, zeta).
    dots = 2 * np.array([matrix[1] @ matrix[2], matrix[0] @ matrix[2], matrix[0] @ matrix[1]])
    if not np.any(np.abs(dots) < eps):
        return matrix, frac  # no right angle: the Niggli cell is unique
    for signs in ((1, 1, 1), (-1, -1, 1), (-1, 1, -1), (1, -1, -1)):
        s = np.array(signs, dtype=np.float64)
        flipped = dots * np.array([s[1] * s[2], s[0] * s[2], s[0] * s[1]])
        if np.all(flipped < eps):
            # Cartesian positions f @ M = (f * s) @ (diag(s) M) are unchanged.
            return matrix * s[:, None], frac * s
    return matrix, frac


def parse_cif(cif: str) -> Structure:
    """Parse one ordered crystal from a CIF string.

    Raises:
        ValueError: ``"<reason>: <detail>"`` with reason one of ``missing cif``,
            ``unparseable CIF``, ``unknown element``, ``disordered sites``, ``bad volume``.
    """
    if not isinstance(cif, str) or not cif.strip():
        raise ValueError("missing cif: empty CIF string")
    # The CIF parser warns about every oddity it repairs and hides the real cause of a
    # failure (e.g. a singular cell) in a warning, so record them for the error message.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            s = Structure.from_str(cif, fmt="cif")
        except Exception as e:  # noqa: BLE001 - pymatgen raises many types on bad input
            raise ValueError(_parse_failure(e, [str(w.message) for w in caught])) from None
    check_structure(s)
    return s


def _parse_failure(error: Exception, messages: list[str]) -> str:
    detail = " ".join(m.replace("\n", " ") for m in messages[-1:]) or str(error)
    reason = "unparseable CIF"
    if any(k in detail.lower() for k in ("singular", "thickness", "volume")):
        reason = "bad volume"
    return f"{reason}: {detail[:120]}"


def check_structure(s: Structure) -> None:
    if not s.is_ordered:
        raise ValueError("disordered sites: partial occupancies are not supported")
    # The CIF parser turns unknown symbols (e.g. "Xx") into dummy species instead of failing.
    unknown = [str(sp) for sp in s.species if isinstance(sp, DummySpecies)]
    if unknown:
        raise ValueError(f"unknown element: {', '.join(sorted(set(unknown)))}")
    volume = float(np.linalg.det(s.lattice.matrix))
    if not np.isfinite(volume) or abs(volume) < MIN_PARSE_VOLUME:
        raise ValueError(f"bad volume: {volume:.3g} A^3")
    if not np.all(np.isfinite(s.frac_coords)):
        raise ValueError("unparseable CIF: non-finite coordinates")


def structure_to_arrays(s: Structure) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lattice (3, 3) float64 A, frac_coords (n, 3) float64, atomic numbers (n,) int64)."""
    return (
        np.array(s.lattice.matrix, dtype=np.float64),
        np.array(s.frac_coords, dtype=np.float64),
        np.array(s.atomic_numbers, dtype=np.int64),
    )


def arrays_to_structure(lattice: np.ndarray, frac: np.ndarray, z: np.ndarray) -> Structure:
    """Structure from lattice (3, 3) rows in A, frac coords (n, 3) and atomic numbers (n,)."""
    lattice = Lattice(np.asarray(lattice, dtype=np.float64).reshape(3, 3))
    species = [int(zi) for zi in np.asarray(z).reshape(-1)]
    return Structure(lattice, species, np.asarray(frac, dtype=np.float64).reshape(-1, 3))


def cell_formula(atoms: np.ndarray) -> str:
    """'SrTiO3' for [38, 22, 8, 8, 8]: elements in order of first appearance (not reduced)."""
    symbols, first, counts = np.unique(np.asarray(atoms), return_index=True, return_counts=True)
    return "".join(
        Element.from_Z(int(symbols[i])).symbol + (str(counts[i]) if counts[i] > 1 else "")
        for i in np.argsort(first)
    )


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
    """True iff the crystal is struct-valid (the module's one rule); never raises (NaN, wrong
    shapes -> False).

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


def row_arrays(row: dict, prefix: str = "") -> CrystalArrays | None:
    """The arrays of one row (a dict of the list columns), or None where they are malformed:
    null lists, wrong lengths, no atoms, Z outside 1..118.

    ``prefix="relaxed_"`` reads the relaxed cell (``relaxed_lattice``,
    ``relaxed_frac_coords``) with the row's atomic numbers.
    """
    try:
        z = np.asarray(row["atomic_numbers"], dtype=np.int64)
        lattice = np.asarray(row[prefix + "lattice"], dtype=np.float64).reshape(3, 3)
        frac = np.asarray(row[prefix + "frac_coords"], dtype=np.float64).reshape(len(z), 3)
    except (TypeError, ValueError):  # null list, None entries, wrong lengths
        return None
    if z.ndim != 1 or len(z) == 0 or not ((z >= 1) & (z <= MAX_Z)).all():
        return None
    return lattice, frac, z


def table_arrays(table, prefix: str = "") -> list[CrystalArrays | None]:
    """``row_arrays`` of every row of a pyarrow Table of crystals."""
    columns = ["atomic_numbers", prefix + "lattice", prefix + "frac_coords"]
    return [row_arrays(row, prefix) for row in table.select(columns).to_pylist()]


def buildable(arrays: CrystalArrays | None) -> bool:
    """A ``Structure`` can be made: well-formed, finite, non-singular lattice."""
    if arrays is None:
        return False
    lattice = arrays[0]
    with np.errstate(all="ignore"):
        return bool(np.isfinite(lattice).all() and abs(np.linalg.det(lattice)) >= MIN_BUILD_VOLUME)


def arrays_valid(arrays: CrystalArrays | None) -> bool:
    """``structure_validity`` of well-formed arrays (malformed rows are not valid)."""
    return arrays is not None and structure_validity(arrays[0], arrays[1])


def rows_to_structures(
    table, prefix: str = "", valid_only: bool = False
) -> list[Structure | None]:
    """One Structure per row of a pyarrow Table of crystals; None where the row is not
    buildable (or, with ``valid_only``, not struct-valid).

    ``prefix="relaxed_"`` builds the relaxed crystals of funnel rows.
    """
    keep = arrays_valid if valid_only else buildable
    return [arrays_to_structure(*a) if keep(a) else None for a in table_arrays(table, prefix)]


def arrays_to_structures(lattices, fracs, numbers) -> list[Structure]:
    """``arrays_to_structure`` for each crystal of parallel sequences."""
    return [arrays_to_structure(*a) for a in zip(lattices, fracs, numbers)]


def structures_to_batch(structures: list[Structure]) -> CrystalBatch:
    """Concatenate structures atom-wise into a float32 CrystalBatch (coordinates as given)."""
    arrays = [structure_to_arrays(s) for s in structures]
    return CrystalBatch(
        frac_coords=torch.from_numpy(np.concatenate([a[1] for a in arrays])).float(),
        lattice=torch.from_numpy(np.stack([a[0] for a in arrays])).float(),
        atom_types=torch.from_numpy(np.concatenate([a[2] for a in arrays])).long(),
        num_atoms=torch.tensor([len(a[2]) for a in arrays], dtype=torch.long),
    )


def batch_to_structures(batch: CrystalBatch) -> list[Structure]:
    """One Structure per crystal of ``batch`` (tensors moved to CPU, float64)."""
    counts = batch.num_atoms.tolist()
    fracs = batch.frac_coords.detach().cpu().double().numpy()
    types = batch.atom_types.detach().cpu().numpy()
    lattices = batch.lattice.detach().cpu().double().numpy()
    bounds = np.concatenate([[0], np.cumsum(counts)])
    return [
        arrays_to_structure(lattices[b], fracs[lo:hi], types[lo:hi])
        for b, (lo, hi) in enumerate(itertools.pairwise(bounds))
    ]
