"""Rediscovery rates: match@1 / match@k raw and relaxed, ranked@k, on hand-made targets."""

from __future__ import annotations

import math

import pytest

from crysray.eval.rediscovery import CandidateScores, rediscovery_rates

NAN = math.nan


def test_rates_on_hand_made_targets():
    targets = [
        # first candidate matches raw; the relaxed match is the lowest-energy one: ranked
        CandidateScores([0.1, None, None], [0.05, None, 0.2], [-5.0, -4.0, -4.5]),
        # nothing matches raw; relaxation finds it in candidate 2, but 1 has a lower energy
        CandidateScores([None, None, None], [None, None, 0.1], [-3.0, -3.5, -3.2]),
        # the matching candidate's relaxation failed (NaN): not matched, not ranked
        CandidateScores([None, 0.3, None], [None, 0.3, None], [-2.0, NAN, -1.0]),
    ]
    k1 = rediscovery_rates(targets, 1)
    assert k1["raw_match_at_1"] == k1["relaxed_match_at_1"] == k1["ranked_at_k"] == 1 / 3
    k3 = rediscovery_rates(targets, 3)
    assert k3["raw_match_at_k"] == pytest.approx(2 / 3)
    assert k3["relaxed_match_at_k"] == pytest.approx(2 / 3)  # target 3's match has no energy
    assert k3["ranked_at_k"] == pytest.approx(1 / 3)
    assert k3["raw_match_at_1"] == k1["raw_match_at_1"] and k3["n"] == 3


def test_too_few_candidates_is_an_error():
    with pytest.raises(ValueError, match="fewer than 4 candidates"):
        rediscovery_rates([CandidateScores([None], [None], [0.0])], 4)
