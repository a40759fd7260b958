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
        rows; sun, sun_fraction: stable & unique & novel rows and their share of all rows;
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
