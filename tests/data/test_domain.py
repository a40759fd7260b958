"""Training domains: which compositions a checkpoint has seen nothing like."""

from __future__ import annotations

import numpy as np

from crysray.data.domain import (
    LARGER_CELL,
    NOT_PEROVSKITE,
    UNSEEN_ELEMENTS,
    TrainingDomain,
    checkpoint_domain,
    dataset_domain,
    out_of_domain,
)
from crysray.sample.compositions import formula_atoms
from crysray.sample.sampler import Composition


def _targets(*formulas):
    return [Composition(f, formula_atoms(f)) for f in formulas]


def test_perov5_domain_is_its_split_and_flags_non_perovskites():
    domain = dataset_domain("perov_5")
    assert domain.max_atoms == 5 and 8 in domain.elements and 17 not in domain.elements
    assert domain.reasons(formula_atoms("SrTiO3")) == []
    assert [r for r, _ in domain.reasons(formula_atoms("GaN"))] == [NOT_PEROVSKITE]
    reasons = dict(domain.reasons(formula_atoms("LiFePO4")))
    assert set(reasons) == {UNSEEN_ELEMENTS, LARGER_CELL, NOT_PEROVSKITE}
    assert reasons[UNSEEN_ELEMENTS] == "P" and reasons[LARGER_CELL] == "7 atoms > 5"
    assert dataset_domain("perov_5") == domain  # the cached copy is the same domain
    # the packaged copy (used for checkpoints without a stored domain) is the computed one
    old_checkpoint = {"config": {"data": {"dataset": "perov_5"}}}
    assert checkpoint_domain(old_checkpoint) == domain


def test_out_of_domain_counts_each_composition_once_and_by_reason():
    domain = TrainingDomain("mp_20_csp", (3, 8, 25, 26), 8)
    found = out_of_domain(_targets("LiMnO2", "Li2O", "NaCl", "Li4Fe4O8", "LiFeO2"), domain)
    assert found.count == 2  # NaCl (Na, Cl unseen) and Li4Fe4O8 (16 atoms)
    assert found.reasons == {UNSEEN_ELEMENTS: 1, LARGER_CELL: 1}
    assert found.named[0] == f"NaCl (NaCl): {UNSEEN_ELEMENTS} (Na Cl)"
    # an MP model has no structure-type restriction: any cell of seen elements within size
    assert domain.reasons(np.array([3, 8])) == []
