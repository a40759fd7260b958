"""Turn a sampling run into report.md, report.json and PNG plots, stored in the run.

A run on object storage is read from there; the plots are drawn into a local temporary
directory and uploaded next to report.md. Plots: energy above hull histogram, element
frequency, space-group distribution (spglib via pymatgen, on struct-valid crystals), funnel
counts per stage.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from pathlib import Path

from crysray.report.plots import plot


def load_rows(run):
    """All rows of the run (a crysray.storage.Storage), with the funnel's columns if filtered."""
    from crysray.filter.campaign import filtered_units

    if filtered_units(run):
        from crysray.filter.campaign import funnel_table, read_decisions, with_uniqueness

        table = funnel_table(run)
        decided = read_decisions(run, columns=["sample_id", "unique"])
        if decided is not None:
            decided = dict(zip(decided["sample_id"].to_pylist(), decided["unique"].to_pylist()))
            table = with_uniqueness(
                table, [bool(decided.get(i, False)) for i in table["sample_id"].to_pylist()]
            )
        return table
    from crysray.sample.campaign import finished_units, unit_key
    from crysray.sample.schema import read_samples

    keys = [run.path(unit_key(u)) for u in finished_units(run)]
    return read_samples(keys, filesystem=run.fs)


def space_groups(table, limit: int) -> Counter:
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    from crysray.structures import rows_to_structures

    valid = table.filter(table["valid_structure"]).slice(0, limit)
    counts = Counter()
    for s in rows_to_structures(valid):
        try:
            counts[SpacegroupAnalyzer(s, symprec=0.1).get_space_group_symbol()] += 1
        except Exception:  # noqa: BLE001 - spglib fails on a few degenerate cells
            counts["(failed)"] += 1
    return counts


def element_counts(table) -> Counter:
    from pymatgen.core import Element

    counts = Counter()
    for zs in table["atomic_numbers"].to_pylist():
        counts.update(Element.from_Z(z).symbol for z in set(zs))
    return counts


def build_report(location: str | Path, spacegroup_limit: int = 2000) -> dict:
    """Write report.json, report.md and the plots into the run (directory or URL)."""
    from crysray.storage import Storage

    run = Storage(location)
    with tempfile.TemporaryDirectory(prefix="crysray-report-") as scratch:
        report = draw_report(run, Path(scratch), spacegroup_limit)
        for name in report["plots"]:  # drawn locally (matplotlib writes files), then stored
            run.write_bytes(name, (Path(scratch) / name).read_bytes())
    run.write_text("report.json", json.dumps(report, indent=1))
    run.write_text("report.md", markdown(report))
    return report


def draw_report(run, plots_dir: Path, spacegroup_limit: int) -> dict:
    """The report of ``run`` (a crysray.storage.Storage); its plots are drawn in plots_dir."""
    import numpy as np

    from crysray.filter.counts import funnel_counts

    table = load_rows(run)
    if table.num_rows == 0:
        raise ValueError(f"{run} holds no crystals")
    report = {
        "run": run.location,
        "crystals": table.num_rows,
        "valid_fraction": float(np.mean(table["valid_structure"].to_pylist())),
        "elements": dict(element_counts(table).most_common()),
        "space_groups": dict(space_groups(table, spacegroup_limit).most_common()),
        "spacegroup_sample": min(spacegroup_limit, table.num_rows),
    }
    plots = [
        plot(
            plots_dir,
            "elements.png",
            *zip(*list(report["elements"].items())[:40]),
            "Element frequency (top 40)",
            "element",
        ),
        plot(
            plots_dir,
            "spacegroups.png",
            *zip(*list(report["space_groups"].items())[:30]),
            "Space groups (valid crystals)",
            "space group",
        ),
    ]
    if "pass_structure" in table.column_names:
        report["funnel"] = funnel_counts(table)
        stages = list(report["funnel"]["funnel"].items())
        plots.append(
            plot(
                plots_dir,
                "funnel.png",
                ["generated"] + [s for s, _ in stages],
                [table.num_rows] + [c for _, c in stages],
                "Funnel: crystals passing each stage",
                "stage",
            )
        )
        e = [v for v in table["e_above_hull"].to_pylist() if v is not None and np.isfinite(v)]
        if e:
            report["e_above_hull_median"] = float(np.median(e))
            plots.append(
                plot(
                    plots_dir,
                    "e_above_hull.png",
                    None,
                    np.clip(e, -0.5, 2.0),
                    "Energy above hull (clipped to [-0.5, 2])",
                    "eV/atom",
                    hist=True,
                )
            )
    report["plots"] = plots
    return report


def markdown(report: dict) -> str:
    lines = [
        f"# crysray run report: {report['run']}",
        "",
        f"- crystals: {report['crystals']}",
        f"- struct-valid: {report['valid_fraction']:.1%}",
    ]
    if "funnel" in report:
        f = report["funnel"]
        lines += ["", "| stage | passing (cumulative) |", "|---|---:|"]
        lines += [f"| {stage} | {count} |" for stage, count in f["funnel"].items()]
        if "sun" in f:
            lines += ["", f"S.U.N. (stable, unique, novel): {f['sun']} ({f['sun_fraction']:.2%})"]
        if "hull" in f:
            lines += [
                (
                    f"Hull: {f['hull']}; stable calls resting on fewer than 5 reference "
                    f"compounds (treat as guesses): {f['stable_on_thin_hull']}"
                )
            ]
    top = ", ".join(f"{k} ({v})" for k, v in list(report["space_groups"].items())[:8])
    lines += ["", f"Most common space groups (of {report['spacegroup_sample']}): {top}", ""]
    lines += [f"![{p}]({p})" for p in report["plots"]]
    return "\n".join(lines) + "\n"
