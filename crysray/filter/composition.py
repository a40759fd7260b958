"""Composition validity: SMACT charge neutrality with the Pauling electronegativity test.

The rule of CDVAE's evaluation (``cdvae/common/data_utils.py: smact_validity``): a composition
is valid if some assignment of oxidation states makes it charge neutral and passes the
Pauling test; single-element crystals and all-metal alloys count as valid. We call smact's own
``smact.screening.smact_validity``, which implements that rule, on the gcd-reduced
stoichiometry. ``oxidation_states_set="smact14"`` selects the oxidation-state table CDVAE used
(smact's default before 3.0); smact 3+ defaults to the ICSD-2024 table, which changes the
numbers by a few percent.
"""

from __future__ import annotations

import functools
from collections import Counter

import numpy as np
from pymatgen.core import Composition, Element

CDVAE_OXIDATION_STATES = "smact14"
# SMACT tries every combination of the elements' oxidation states: the work grows
# exponentially with the number of elements, and the many-element cells of a barely trained
# model kept one evaluation busy for over half an hour. The datasets' cells have at most 6
# elements (MP-20 samples here; Perov-5: 5); beyond 8 a composition is not checked and counts
# as invalid (``composition_check`` returns None).
MAX_ELEMENTS_CHECKED = 8


def composition_of(numbers: np.ndarray) -> Composition:
    """pymatgen Composition of a list of atomic numbers (n,)."""
    counts = Counter(int(z) for z in np.asarray(numbers).reshape(-1))
    return Composition({Element.from_Z(z): n for z, n in sorted(counts.items())})


def composition_validity(
    numbers: np.ndarray, oxidation_states_set: str = CDVAE_OXIDATION_STATES
) -> bool:
    """True iff the composition of atomic numbers (n,) passes SMACT; never raises. Cells of more
    than MAX_ELEMENTS_CHECKED elements are not checked and count as invalid."""
    return bool(composition_check(numbers, oxidation_states_set))


def composition_check(
    numbers: np.ndarray, oxidation_states_set: str = CDVAE_OXIDATION_STATES
) -> bool | None:
    """SMACT's verdict on the composition of atomic numbers (n,), or None when it is not asked:
    more than MAX_ELEMENTS_CHECKED elements (what the funnel counts as not checked)."""
    try:
        composition = composition_of(numbers)
    except (ValueError, KeyError):
        return False  # Z outside the periodic table
    if len(composition.elements) > MAX_ELEMENTS_CHECKED:
        return None
    return _smact_valid(composition.formula, oxidation_states_set)


@functools.lru_cache(maxsize=65536)
def _smact_valid(formula: str, oxidation_states_set: str) -> bool:
    """Cached by formula: a generated batch repeats the same compositions many times."""
    from smact.screening import smact_validity

    try:
        return bool(
            smact_validity(
                Composition(formula),
                use_pauling_test=True,
                include_alloys=True,
                oxidation_states_set=oxidation_states_set,
            )
        )
    except (ValueError, KeyError, TypeError, NameError):
        return False  # an element smact has no data for (e.g. no oxidation states at all)
