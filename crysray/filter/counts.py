"""Counts of a funnel output table (crysray.filter.funnel): per stage, cumulative, S.U.N."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa

FEW_REFERENCE_PHASES = 5  # fewer compounds than this in a chemical system: a thin hull
STAGES = ("structure", "composition", "unique", "novel", "relax", "hull")
FLAGS = {
    "structure": "pass_structure",
    "composition": "pass_composition",
    "unique": "unique",
    "novel": "novel",
    "relax": "pass_relax",
    "hull": "stable",
}


def bools(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Boolean pyarrow column -> numpy bool array, nulls as False."""
    return np.asarray(values.fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)


def funnel_counts(table: pa.Table) -> dict:
    """Counts of a funnel output table.

    Returns:
        total: rows; passed: stage -> rows passing that stage alone; funnel: stage -> rows
        passing it and every earlier stage that ran; relax_status / hull_status: value ->
        rows; composition_not_checked: rows whose composition SMACT was not asked about (too
        many elements; they fail the composition stage); sun, sun_fraction: stable & unique &
        novel rows and their share of all rows;
        hull, stable_on_thin_hull: the hull used and how many stable calls rest on fewer than
        FEW_REFERENCE_PHASES reference compounds (calls a user should treat as guesses).
    """
    n = table.num_rows
    passed, funnel = {}, {}
    running = np.ones(n, dtype=bool)
    for stage in STAGES:
        flag = FLAGS[stage]
        if flag in table.column_names:
            ok = bools(table[flag])
            running &= ok
            passed[stage], funnel[stage] = int(ok.sum()), int(running.sum())
    counts = {"total": n, "passed": passed, "funnel": funnel}
    if "pass_composition" in table.column_names:
        counts["composition_not_checked"] = table["pass_composition"].null_count
    for column in ("relax_status", "hull_status"):
        if column in table.column_names:
            counts[column] = dict(Counter(v for v in table[column].to_pylist() if v is not None))
    if "hull_reference_phases" in table.column_names:
        names = {v for v in table["hull_reference"].to_pylist() if v is not None}
        phases = table["hull_reference_phases"].fill_null(0).to_numpy(zero_copy_only=False)
        counts["hull"] = ",".join(sorted(names))
        counts["stable_on_thin_hull"] = int(
            (bools(table["stable"]) & (phases < FEW_REFERENCE_PHASES)).sum()
        )
    if "sun" in table.column_names:
        sun = int(bools(table["sun"]).sum())
        counts["sun"], counts["sun_fraction"] = sun, sun / n if n else 0.0
    return counts


def merge_counts(parts: list[dict]) -> dict:
    """The ``funnel_counts`` of a table from the counts of its pieces (rows split any way)."""
    total = sum(p["total"] for p in parts)
    counts = {"total": total}
    for key in ("passed", "funnel", "relax_status", "hull_status"):
        if parts and key in parts[0]:
            counts[key] = _add(p[key] for p in parts)
    if any("composition_not_checked" in p for p in parts):
        counts["composition_not_checked"] = sum(p.get("composition_not_checked", 0) for p in parts)
    if parts and "hull" in parts[0]:
        names = {n for p in parts for n in p["hull"].split(",") if n}
        counts["hull"] = ",".join(sorted(names))
        counts["stable_on_thin_hull"] = sum(p["stable_on_thin_hull"] for p in parts)
    if parts and "sun" in parts[0]:
        sun = sum(p["sun"] for p in parts)
        counts["sun"], counts["sun_fraction"] = sun, sun / total if total else 0.0
    return counts


def _add(dicts) -> dict:
    """Key-wise sums, zeros kept (a stage that nothing passed still has its count)."""
    total: dict = {}
    for d in dicts:
        for k, v in d.items():
            total[k] = total.get(k, 0) + v
    return total
