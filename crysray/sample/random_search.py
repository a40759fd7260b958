"""Random structure search: the baseline every generative CSP model must beat.

Two generators of candidate cells for a known composition, both relaxed afterwards by the same
funnel code as the model's samples:

- ``pyxtal_candidates``: PyXtal's random symmetric crystals. A space group is drawn uniformly
  from those whose Wyckoff positions can hold the cell's atom counts, then PyXtal places the
  atoms on random Wyckoff sites of that group with its own composition-based volume estimate
  (``factor`` times the sum of atomic volumes) and minimum distances. The counts are those of
  the primitive cell (``conventional=False``), so a candidate has exactly the requested atoms.
- ``random_cell_candidates``: the simplest start, as AIRSS does it: a random cell of the
  volume the composition implies (drawn as PyXtal draws it: per element, uniformly between its
  covalent and van der Waals sphere volumes, times ``VOLUME_FACTOR``), atoms at uniformly random
  fractional positions, redrawn while two atoms sit closer than a fraction of their covalent
  radii.

Every draw comes from one ``numpy.random.Generator``, so a seed fixes the candidates.
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter

import numpy as np
from pymatgen.core import Element, Lattice, Structure

logger = logging.getLogger(__name__)

# PyXtal's default volume factor, so that both random generators start at the same density
VOLUME_FACTOR = 1.1
# AIRSS-style minimum separation: atoms closer than this share of the sum of their covalent
# radii make the draw be redrawn
MIN_SEPARATION = 0.7
_MAX_DRAWS = 200


def compatible_space_groups(atomic_numbers: np.ndarray) -> list[int]:
    """Space groups (1..230) whose Wyckoff positions can hold the primitive cell's counts."""
    from pyxtal.symmetry import Group  # an optional dependency: only random search needs it

    counts = _counts(atomic_numbers)
    groups = []
    for number in range(1, 231):
        group = Group(number)
        # Wyckoff multiplicities count conventional-cell atoms; a centred cell holds more
        # primitive cells, so scale the counts the way conventional=False does
        scale = _centring_factor(group.symbol)
        if group.check_compatible([c * scale for c in counts.values()])[0]:
            groups.append(number)
    return groups


def pyxtal_candidates(
    atomic_numbers: np.ndarray, k: int, rng: np.random.Generator, groups: list[int] | None = None
) -> list[Structure | None]:
    """k random symmetric crystals with exactly these atoms per cell (None: PyXtal gave up)."""
    from pyxtal import pyxtal as PyXtal

    counts = _counts(atomic_numbers)
    species = [Element.from_Z(z).symbol for z in counts]
    groups = groups if groups is not None else compatible_space_groups(atomic_numbers)
    out: list[Structure | None] = []
    for _ in range(k):
        out.append(_one_pyxtal(PyXtal, species, list(counts.values()), groups, rng))
    return out


def _one_pyxtal(PyXtal, species, counts, groups, rng) -> Structure | None:
    for _ in range(10):  # a group can fail for a composition (PyXtal's own tries run out)
        group = int(rng.choice(groups))
        crystal = PyXtal()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                seed = int(rng.integers(2**31))
                crystal.from_random(3, group, species, counts, factor=VOLUME_FACTOR,
                                    conventional=False, random_state=seed)  # fmt: skip
            if crystal.valid:
                structure = crystal.to_pymatgen()
                if len(structure) == sum(counts):
                    return structure
        except Exception as err:  # noqa: BLE001 - PyXtal raises many types when it gives up
            logger.debug("pyxtal group %d: %s", group, err)
    return None


def random_cell_candidates(
    atomic_numbers: np.ndarray, k: int, rng: np.random.Generator
) -> list[Structure | None]:
    """k random cells (AIRSS-like starts) with exactly these atoms (None: no draw kept the
    minimum separation)."""
    numbers = np.asarray(atomic_numbers, dtype=int)
    radii = np.array([_radii(z)[0] for z in numbers])
    return [_one_random_cell(numbers, radii, rng) for _ in range(k)]


def _one_random_cell(numbers, radii, rng) -> Structure | None:
    for _ in range(_MAX_DRAWS):
        lengths = rng.uniform(0.5, 1.5, 3)
        angles = rng.uniform(60.0, 120.0, 3)
        try:
            lattice = Lattice.from_parameters(*lengths, *angles)
        except ValueError:
            continue
        if not np.isfinite(lattice.volume) or lattice.volume < 1e-3 * np.prod(lengths):
            continue  # (near-)degenerate angle triple
        lattice = lattice.scale(_random_volume(numbers, rng))
        structure = Structure(lattice, numbers.tolist(), rng.random((len(numbers), 3)))
        if len(numbers) == 1 or _separated(structure, radii):
            return structure
    return None


def _random_volume(numbers: np.ndarray, rng: np.random.Generator) -> float:
    sphere = {z: 4.0 / 3.0 * np.pi * np.asarray(_radii(z)) ** 3 for z in set(numbers.tolist())}
    per_element = {z: rng.uniform(*v) for z, v in sphere.items()}
    return VOLUME_FACTOR * float(sum(per_element[z] for z in numbers.tolist()))


def _separated(structure: Structure, radii: np.ndarray) -> bool:
    distances = structure.distance_matrix
    limit = MIN_SEPARATION * (radii[:, None] + radii[None, :])
    np.fill_diagonal(distances, np.inf)
    return bool(np.all(distances >= limit))


def _counts(atomic_numbers: np.ndarray) -> Counter:
    return Counter(int(z) for z in atomic_numbers)


def _radii(z: int) -> tuple[float, float]:
    """(covalent, van der Waals) radius, A, from PyXtal's table (the one its generator uses)."""
    from pyxtal.database.element import Element as PyXtalElement

    element = PyXtalElement(int(z))
    return float(element.covalent_radius), float(element.vdw_radius)


def _centring_factor(symbol: str) -> int:
    """Primitive cells per conventional cell of a Hermann-Mauguin symbol's lattice."""
    return {"P": 1, "A": 2, "B": 2, "C": 2, "I": 2, "F": 4, "R": 3}[symbol[0]]
