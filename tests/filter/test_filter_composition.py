"""crysray.filter.composition: SMACT charge neutrality + electronegativity, CDVAE's rule."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pymatgen.core import Composition

from crysray.data.csv import dataset_path
from crysray.filter.composition import (
    MAX_ELEMENTS_CHECKED,
    composition_check,
    composition_of,
    composition_validity,
)
from crysray.filter.counts import funnel_counts, merge_counts


@pytest.mark.parametrize(
    ("numbers", "valid"),
    [
        ([11, 17], True),  # NaCl
        ([11, 17, 17], False),  # NaCl2: no neutral assignment
        ([6, 6, 6], True),  # single element
        ([29, 30, 30], True),  # CuZn2: all metals count as an alloy
        ([26, 26, 26, 8, 8, 8, 8], False),  # Fe3O4: mixed valence is not allowed (as in CDVAE)
        ([0, 11], False),  # Z = 0 is not an element
    ],
)
def test_known_compositions(numbers, valid):
    assert composition_validity(np.array(numbers)) is valid


def test_order_and_multiplicity_do_not_matter():
    assert composition_validity(np.array([17, 11, 11, 17])) is composition_validity(
        np.array([11, 17])
    )
    assert composition_of(np.array([17, 11, 11, 17])).reduced_formula == "NaCl"


def test_mp20_share_matches_the_literature():
    """CDVAE-style comp-validity of real MP-20 crystals is ~0.89-0.91."""
    formulas = pd.read_csv(dataset_path("mp_20_pilot", "test"), usecols=["pretty_formula"])[
        "pretty_formula"
    ]
    numbers = [[el.Z for el, k in Composition(f).items() for _ in range(int(k))] for f in formulas]
    share = np.mean([composition_validity(np.array(z)) for z in numbers])
    assert 0.86 < share < 0.93


def test_cells_of_too_many_elements_are_counted_invalid_without_a_check():
    """SMACT's search is exponential in the number of elements: past the limit, no check."""
    many = np.array([3, 8, 11, 12, 13, 14, 15, 16, 17, 19, 20, 26][: MAX_ELEMENTS_CHECKED + 1])
    assert len(composition_of(many).elements) == MAX_ELEMENTS_CHECKED + 1
    assert composition_check(many) is None
    assert composition_validity(many) is False
    at_limit = many[:MAX_ELEMENTS_CHECKED]
    assert composition_check(at_limit) in (True, False)


def test_funnel_counts_the_compositions_not_checked():
    """A null pass_composition (not checked) fails the stage and is counted, also when the
    counts of a run are merged from its units."""
    import pyarrow as pa

    part = pa.table(
        {
            "pass_structure": [True, True, True, False],
            "pass_composition": pa.array([True, None, False, None], pa.bool_()),
        }
    )
    counts = funnel_counts(part)
    assert counts["composition_not_checked"] == 2
    assert counts["passed"]["composition"] == 1 and counts["funnel"]["composition"] == 1
    merged = merge_counts([counts, funnel_counts(part.slice(0, 2))])
    assert merged["composition_not_checked"] == 3
