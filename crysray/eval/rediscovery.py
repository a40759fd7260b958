"""Rediscovery after relaxation: what a CSP campaign hands to DFT (docs/evaluation.md E5).

For each known ground state, k candidates of its cell composition are generated and each is
relaxed. Three questions, each for the first k candidates:

- ``match@1`` / ``match@k`` (raw and relaxed): the first / any candidate matches the known
  structure (crysray.eval.csp's matcher), before and after relaxation;
- ``ranked@k``: the candidate of lowest relaxed energy per atom matches after relaxation. It is
  the one a campaign sends to DFT, so it is the figure a user pays for.

A candidate whose relaxation failed (no finite energy) cannot be ranked and counts as unmatched
after relaxation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CandidateScores:
    """One target's candidates, in generation order."""

    raw_rms: list[float | None]  # RMSE of a raw match, None = no match
    relaxed_rms: list[float | None]  # the same after relaxation
    energy_per_atom: list[float]  # relaxed MatGL energy, NaN where the relaxation failed


def rediscovery_rates(targets: list[CandidateScores], k: int) -> dict:
    """Shares of targets rediscovered with the first ``k`` candidates of each."""
    if not targets:
        raise ValueError("no targets to score")
    short = [i for i, t in enumerate(targets) if len(t.raw_rms) < k]
    if short:
        raise ValueError(f"{len(short)} targets have fewer than {k} candidates (first: {short[0]})")
    rows = [_target_flags(t, k) for t in targets]
    return {
        "k": k,
        "n": len(targets),
        **{name: float(np.mean([r[name] for r in rows])) for name in rows[0]},
    }


def _target_flags(t: CandidateScores, k: int) -> dict[str, bool]:
    raw = [r is not None for r in t.raw_rms[:k]]
    relaxed = [r is not None for r in t.relaxed_rms[:k]]
    energies = np.asarray(t.energy_per_atom[:k], dtype=float)
    finite = np.isfinite(energies)
    best = int(np.argmin(np.where(finite, energies, math.inf))) if finite.any() else None
    return {
        "raw_match_at_1": raw[0],
        "raw_match_at_k": any(raw),
        "relaxed_match_at_1": relaxed[0] and bool(finite[0]),
        "relaxed_match_at_k": any(r and f for r, f in zip(relaxed, finite)),
        "ranked_at_k": best is not None and relaxed[best],
    }
