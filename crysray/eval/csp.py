"""Crystal structure prediction metrics: match rate and RMSE (docs/evaluation.md E2).

A prediction matches its target when it is struct-valid (crysray.structures) and
``StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3)`` finds a mapping; its RMSE is
``get_rms_dist(pred, target)[0]``, normalised by (V/n)^(1/3). Composition is not checked.
Matching is the slow part (seconds per hundred pairs), so it runs in a process pool.

The mean RMSE over matches alone cannot tell a tight model from a loose one (a model that
matches few crystals tightly and one that matches many loosely can have the same value), so
``match_rate_rmse`` also reports the share of crystals matched within RMSE 0.05 and 0.1, an
RMSE over all crystals in which an unmatched crystal counts at the matcher's tolerance
(stol = 0.5), and the share of generated structures with two atoms closer than 0.5 A.
"""

from __future__ import annotations

import math
from multiprocessing import Pool

import numpy as np
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Structure

from crysray.structures import (
    MIN_DISTANCE,
    arrays_to_structure,
    min_interatomic_distance,
    structure_to_arrays,
    structure_validity,
)

# Built once per process (pool workers inherit or rebuild it on import).
STOL = 0.5
MATCHER = StructureMatcher(stol=STOL, angle_tol=10, ltol=0.3)
TIGHT_RMSE = (0.05, 0.1)

# Ordered structures travel to workers as (lattice, frac, Z) arrays: cheaper to pickle than
# Structures, and species become plain elements as in the reference evaluation.
Packed = tuple[np.ndarray, np.ndarray, np.ndarray] | Structure | None


def match_rate_rmse(
    predictions: list[list[Structure | None]], targets: list[Structure], workers: int = 2
) -> dict:
    """CSP match rate and RMSE, for the first candidate and for the best of k.

    Args:
        predictions: per target, a list of candidate structures (None = failed sample, counted
            as unmatched); a bare Structure or None is taken as a one-candidate list.
        targets: ground-truth structures, same order as ``predictions``.
        workers: processes for matching (<= 1: in this process).

    Returns:
        ``match_rate`` (first candidate), ``rmse`` (mean over its matches, NaN if none),
        ``match_rate_at_k`` (any candidate matches), ``rmse_at_k`` (mean over targets of the
        smallest matched RMSE), ``k`` (most candidates per target), ``n`` (targets), the
        tightness of the first candidates (``tightness``) and ``close_atoms_share`` over all
        candidates.
    """
    candidates = [p if isinstance(p, (list, tuple)) else [p] for p in predictions]
    rms = candidate_rms(candidates, targets, workers)
    first = [r[0] if r else None for r in rms]
    best = [min((v for v in r if v is not None), default=None) for r in rms]
    rate, rmse = _summary(first)
    rate_k, rmse_k = _summary(best)
    return {
        "match_rate": rate,
        "rmse": rmse,
        "match_rate_at_k": rate_k,
        "rmse_at_k": rmse_k,
        "k": max(len(c) for c in candidates),
        "n": len(targets),
        **tightness(first),
        "close_atoms_share": close_atoms_share([c for cands in candidates for c in cands]),
    }


def candidate_rms(
    predictions: list[list[Structure | None]], targets: list[Structure], workers: int = 2
) -> list[list[float | None]]:
    """Per target, per candidate: the RMSE of a struct-valid match, or None (no match)."""
    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} prediction lists for {len(targets)} targets")
    if not targets:
        raise ValueError("no targets to evaluate")
    items = [([_pack(c) for c in cands], _pack(t)) for cands, t in zip(predictions, targets)]
    return _map(items, workers)


def tightness(rms: list[float | None]) -> dict:
    """Shares of crystals matched with RMSE below each of TIGHT_RMSE, and the all-crystal RMSE.

    rms: per crystal, the RMSE of its match or None if unmatched. In ``rmse_all`` an unmatched
    crystal counts at the matcher's site tolerance stol = 0.5 (the largest RMSE a match can
    have, in the same (V/n)^(1/3) units), so that it falls when match rate or tightness rises.
    """
    if not rms:
        raise ValueError("no crystals")
    values = np.array([STOL if r is None else min(r, STOL) for r in rms])
    out = {f"tight_{t:g}": float(np.mean(values < t)) for t in TIGHT_RMSE}
    out["rmse_all"] = float(values.mean())
    out["rmse_median"] = (
        float(np.median([r for r in rms if r is not None]))
        if any(r is not None for r in rms)
        else math.nan
    )
    return out


def close_atoms_share(structures: list[Structure | Packed]) -> float:
    """Share of generated structures with two atoms (or an atom and its image) closer than
    0.5 A. A structure that failed (None) or has a non-finite lattice or coordinates counts
    as not close; it is already unmatched."""
    if not structures:
        raise ValueError("no structures")
    close = 0
    for s in structures:
        if s is None:
            continue
        lattice, frac = (s.lattice.matrix, s.frac_coords) if isinstance(s, Structure) else s[:2]
        lattice, frac = np.asarray(lattice, dtype=float), np.asarray(frac, dtype=float)
        if np.isfinite(lattice).all() and np.isfinite(frac).all() and len(frac):
            close += min_interatomic_distance(lattice, frac) < MIN_DISTANCE
    return close / len(structures)


def _summary(values: list[float | None]) -> tuple[float, float]:
    """(fraction not None, mean of the not-None values or NaN)."""
    matched = [v for v in values if v is not None]
    rmse = float(np.mean(matched)) if matched else math.nan
    return len(matched) / len(values), rmse


def _map(items: list, workers: int) -> list[list[float | None]]:
    if workers <= 1 or len(items) < 2:
        return [_score(item) for item in items]
    # Several chunks per worker: pairs differ a lot in cost, so this balances the load.
    chunksize = max(1, math.ceil(len(items) / (workers * 16)))
    with Pool(workers) as pool:
        return pool.map(_score, items, chunksize=chunksize)


def _score(item: tuple[list[Packed], Packed]) -> list[float | None]:
    candidates, target = item
    gt = _unpack(target)
    return [_rms(c, gt) for c in candidates]


def _rms(pred: Packed, gt: Structure) -> float | None:
    """RMSE of a struct-valid matching prediction, else None (matcher errors included)."""
    if pred is None:
        return None
    if isinstance(pred, Structure):
        lattice, frac = pred.lattice.matrix, pred.frac_coords
    else:
        lattice, frac = pred[0], pred[1]
    if not structure_validity(lattice, frac):
        return None
    try:
        out = MATCHER.get_rms_dist(_unpack(pred), gt)
    except Exception:  # noqa: BLE001 - a pair the matcher cannot handle is no match
        return None
    return None if out is None else float(out[0])


def _pack(s: Structure | None) -> Packed:
    if s is None or not s.is_ordered:
        return s
    return structure_to_arrays(s)


def _unpack(p: Packed) -> Structure | None:
    if p is None or isinstance(p, Structure):
        return p
    return arrays_to_structure(*p)
