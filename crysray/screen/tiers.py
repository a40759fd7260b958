"""The tiered funnel: full relaxations spent only where they pay, one composition at a time.

A CSP campaign draws k samples of each cell composition; many are the same structure, most
are far above the best of their composition. Relaxing all of them fully is what made the
funnel, not the model, the bottleneck. Per reduced formula (all its cell sizes Z together,
energies compared per atom), the tiers, cheapest first:

1. ``structure``: the codec's validity rule (finite cell, volume, distances);
2. ``duplicate``: StructureMatcher duplicates of an earlier sample are merged (k identical
   samples are not relaxed k times);
3. ``prerelax``: every distinct sample gets ``prerelax_steps`` FIRE steps; samples that blow
   up are dropped (``prerelax_failed``), and only the ``prerelax_keep`` lowest within
   ``prerelax_window`` eV/atom of the best of the composition survive (``prerelax_energy``),
   none more than ``prerelax_hull_cut`` above the hull (``prerelax_hull``);
4. ``relax``: survivors relax fully from where the pre-relaxation left them
   (``relax_failed``: no converged energy);
5. ``relaxed_duplicate``: relaxed survivors that became the same structure are merged again,
   keeping the lowest in energy;
6. ``candidate``: what is left, placed on the hull (``stable``: converged and within the
   funnel's ``stable_threshold`` of the hull).

No row is dropped: ``tier`` names the tier that removed it (``candidate`` for survivors), so
a tier's cost and what it lost can be measured from the rows.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from crysray.filter.config import FunnelConfig
from crysray.filter.funnel import Relaxed, hull_values, relax_arrays, structure_flags
from crysray.filter.hull import HullReference
from crysray.filter.uniqueness import (
    default_matcher,
    prepare_for_matching,
    prepared_fit,
    uniqueness,
)
from crysray.screen.config import ScreenConfig
from crysray.structures import arrays_to_structure, table_arrays

TIERS = ("structure", "duplicate", "prerelax_failed", "prerelax_energy", "prerelax_hull",
         "relax_failed", "relaxed_duplicate", "candidate")  # fmt: skip


@dataclass
class Models:
    """What the tiers need loaded: potential, hull, MP elemental references, known crystals."""

    potential: object
    hull: HullReference
    references: object  # crysray.filter.energy.ElementalReferences
    known: object = None  # crysray.screen.known.KnownMaterials, or None


def screen_formula(rows: pa.Table, screen: ScreenConfig, funnel: FunnelConfig,
                   models: Models, seconds: dict | None = None) -> pa.Table:  # fmt: skip
    """The tiers over the samples of one reduced formula; the rows with the tier columns.
    ``seconds``, if given, is added to: wall time per tier."""
    clock = _Clock(seconds if seconds is not None else {})
    ids = rows["sample_id"].to_pylist()
    arrays = table_arrays(rows)
    n = len(ids)
    tier: list[str | None] = [None] * n
    valid = structure_flags(arrays)
    for i in np.flatnonzero(~np.asarray(valid, dtype=bool)):
        tier[i] = "structure"
    structures = [arrays_to_structure(*a) if ok else None for a, ok in zip(arrays, valid)]
    clock("structure")
    unique, duplicate_of = uniqueness(structures, ids)
    clock("duplicate")
    for i in range(n):
        if tier[i] is None and not unique[i]:
            tier[i] = "duplicate"

    distinct = [i for i in range(n) if tier[i] is None]
    pre = dict(zip(distinct, relax_arrays([arrays[i] for i in distinct], models.potential,
                                          funnel, relax_steps=screen.prerelax_steps)))  # fmt: skip
    pre_hull = {i: _e_hull(r, models) for i, r in pre.items() if r.energy_per_atom is not None}
    for i in distinct:
        if pre[i].energy_per_atom is None:
            tier[i] = "prerelax_failed"
    for i, why in _prerelax_cut(pre, pre_hull, screen).items():
        tier[i] = why
    clock("prerelax")

    survivors = [i for i in distinct if tier[i] is None]
    full = dict(zip(survivors, relax_arrays([_arrays(pre[i]) for i in survivors],
                                            models.potential, funnel)))  # fmt: skip
    clock("relax")
    for i in survivors:
        if full[i].status != "converged" or full[i].energy_per_atom is None:
            tier[i] = "relax_failed"
    relaxed_duplicate_of = _merge_relaxed([i for i in survivors if tier[i] is None], full, ids)
    for i, of in relaxed_duplicate_of.items():
        tier[i], duplicate_of[i] = "relaxed_duplicate", of
    for i in range(n):
        tier[i] = tier[i] or "candidate"
    clock("relaxed_duplicate")
    out = _attach(rows, tier, duplicate_of, pre, pre_hull, full, funnel, models)
    clock("hull_and_known")
    return out


class _Clock:
    """Adds the time since the last call to ``seconds[name]``."""

    def __init__(self, seconds: dict):
        self.seconds, self.last = seconds, time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = self.seconds.get(name, 0.0) + now - self.last
        self.last = now


def _e_hull(relaxed: Relaxed, models: Models) -> float | None:
    return hull_values(relaxed, models.hull, models.references).e_above_hull


def _prerelax_cut(pre: dict, pre_hull: dict, screen: ScreenConfig) -> dict[int, str]:
    """Rows the pre-relaxation tier removes, with the reason."""
    energies = {i: r.energy_per_atom for i, r in pre.items() if r.energy_per_atom is not None}
    if not energies:
        return {}
    best = min(energies.values())
    ranked = sorted(energies, key=lambda i: (energies[i], i))
    cut = screen.prerelax_hull_cut
    window = screen.prerelax_window if screen.prerelax_window is not None else np.inf
    removed = {}
    for rank, i in enumerate(ranked):
        if rank >= screen.prerelax_keep or energies[i] > best + window:
            removed[i] = "prerelax_energy"
        elif cut is not None and pre_hull.get(i) is not None and pre_hull[i] > cut:
            removed[i] = "prerelax_hull"
    return removed


def _merge_relaxed(rows: list[int], full: dict, ids: list[str]) -> dict[int, str]:
    """Relaxed duplicates, lowest energy first: {row: sample_id of the kept match}."""
    order = sorted(rows, key=lambda i: (full[i].energy_per_atom, i))
    matcher, kept, merged = default_matcher(), [], {}
    structures = [prepare_for_matching(matcher, arrays_to_structure(*_arrays(full[i])))
                  for i in order]  # fmt: skip
    for i, s in zip(order, structures):
        match = next((j for j, t in kept if prepared_fit(matcher, t, s)), None)
        if match is None:
            kept.append((i, s))
        else:
            merged[i] = ids[match]
    return merged


def _arrays(r: Relaxed):
    return r.lattice, r.frac_coords, r.atomic_numbers


def _attach(rows, tier, duplicate_of, pre, pre_hull, full, funnel, models) -> pa.Table:
    n = rows.num_rows
    hull = {i: hull_values(r, models.hull, models.references)
            for i, r in full.items() if r.energy_per_atom is not None}  # fmt: skip
    candidates = [i for i in range(n) if tier[i] == "candidate"]
    known = models.known.matches([arrays_to_structure(*_arrays(full[i])) for i in candidates]) \
        if models.known is not None else [None] * len(candidates)  # fmt: skip
    known_id = dict(zip(candidates, known))
    stable = [
        tier[i] == "candidate" and hull.get(i) is not None and hull[i].e_above_hull is not None
        and hull[i].e_above_hull <= funnel.stable_threshold
        for i in range(n)
    ]  # fmt: skip

    def column(values, kind):
        return pa.array(values, kind)

    def of_full(get, kind):
        return column([get(full[i]) if i in full else None for i in range(n)], kind)

    def of_hull(name, kind):
        return column([getattr(hull[i], name) if i in hull else None for i in range(n)], kind)

    new = {
        "tier": column(tier, pa.string()),
        "duplicate_of": column(duplicate_of, pa.string()),
        "prerelax_energy_per_atom": column(
            [pre[i].energy_per_atom if i in pre else None for i in range(n)], pa.float64()),
        "prerelax_e_above_hull": column([pre_hull.get(i) for i in range(n)], pa.float64()),
        "relax_status": of_full(lambda r: r.status, pa.string()),
        "relax_steps_taken": column(
            [(pre[i].steps if i in pre else 0) + (full[i].steps if i in full else 0)
             if i in pre else None for i in range(n)], pa.int32()),
        "energy_per_atom": of_full(lambda r: r.energy_per_atom, pa.float64()),
        "relaxed_lattice": of_full(lambda r: r.lattice.reshape(-1).tolist(),
                                   pa.list_(pa.float64())),
        "relaxed_frac_coords": of_full(lambda r: r.frac_coords.reshape(-1).tolist(),
                                       pa.list_(pa.float64())),
        "formation_energy_per_atom": of_hull("formation_energy_per_atom", pa.float64()),
        "e_above_hull": of_hull("e_above_hull", pa.float64()),
        "hull_status": of_hull("status", pa.string()),
        "hull_reference": column([models.hull.name] * n, pa.string()),
        "hull_reference_phases": of_hull("phases", pa.int32()),
        "stable": column(stable, pa.bool_()),
        "known_id": column([known_id.get(i) for i in range(n)], pa.string()),
        "novel": column([tier[i] == "candidate" and known_id.get(i) is None
                         for i in range(n)], pa.bool_()),
    }  # fmt: skip
    for name, values in new.items():
        if name in rows.column_names:
            rows = rows.drop_columns([name])
        rows = rows.append_column(name, values)
    return rows


def tier_counts(table: pa.Table) -> dict:
    """Rows removed per tier (``candidate``: rows that survived every tier), relaxations and
    FIRE steps spent."""
    tiers = Counter(table["tier"].to_pylist())
    return {
        "rows": table.num_rows,
        "removed": {t: int(tiers.get(t, 0)) for t in TIERS},
        "prerelaxations": table.num_rows - int(tiers.get("structure", 0))
        - int(tiers.get("duplicate", 0)),
        "full_relaxations": len(table["relax_status"].drop_null()),
        "fire_steps": int(np.nansum(table["relax_steps_taken"].to_numpy(zero_copy_only=False)
                                    .astype(float))),
    }  # fmt: skip
