"""The campaign's own report: per-system outputs (crysray.screen.ranking), ``report.md`` and
``summary.json`` with the tiers' counts and where the time went."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.compute as pc

from crysray.filter.config import FunnelConfig
from crysray.screen.config import ScreenConfig
from crysray.screen.ranking import markdown_table, system_candidates, write_system
from crysray.screen.stage import campaign_hull, screen_counts, screened_table
from crysray.storage import Storage

REPORT = "report.md"
SUMMARY = "summary.json"
TABLE_ROWS = 15


def write_campaign_report(store: Storage, systems: list[str], per_system: dict,
                          screen: ScreenConfig, funnel: FunnelConfig, hull_exclude: dict,
                          seconds: dict, sampled: dict) -> dict:  # fmt: skip
    """Rank every system, write its outputs, then ``report.md`` and ``summary.json``."""
    from crysray.filter.energy import load_elemental_references

    table = screened_table(store)
    hull = campaign_hull(funnel, hull_exclude)
    references = load_elemental_references()
    ranked, outputs = {}, {}
    for system in systems:
        ranked[system] = system_candidates(table, system)
        outputs[system] = {**per_system[system],
                           **write_system(store, system, ranked[system], hull, references,
                                          screen.top_candidates)}  # fmt: skip
    tiers = screen_counts(store)
    summary = {
        "systems": outputs,
        "tiers": tiers,
        "samples": table.num_rows,
        "valid_samples": table.num_rows - tiers.get("removed", {}).get("structure", 0),
        "seconds": seconds,
        "throughput": throughput(table.num_rows, tiers, seconds, sampled),
        "hull": hull.describe(),
        "screen": screen.as_dict(),
        "funnel": funnel.as_dict(),
        "report": store.display(REPORT),
    }
    store.write_text(SUMMARY, json.dumps(summary, indent=1, default=_plain))
    store.write_text(REPORT, markdown(summary, ranked))
    return summary


def throughput(samples: int, tiers: dict, seconds: dict, sampled: dict) -> dict:
    """Candidates screened per second of each stage and of the whole campaign, and what the
    tiers saved: full relaxations avoided next to relaxing every valid sample."""
    valid = samples - tiers.get("removed", {}).get("structure", 0)
    full = tiers.get("full_relaxations", 0)
    total = sum(seconds.values())
    return {
        "samples_per_second_sampling": samples / seconds["sampling"] if seconds.get("sampling")
        else None,
        "samples_per_second_screening": samples / seconds["screening"]
        if seconds.get("screening") else None,
        "samples_per_second": samples / total if total else None,
        "full_relaxations": full,
        "relaxations_avoided": valid - full,
        "fewer_full_relaxations": valid / full if full else None,
        "fire_steps": tiers.get("fire_steps", 0),
        "screening_worker_seconds": tiers.get("seconds", 0.0),
        "sampled_crystals_per_second": sampled.get("crystals_per_second"),
    }  # fmt: skip


def markdown(summary: dict, ranked: dict) -> str:
    tiers = summary["tiers"]
    removed = tiers.get("removed", {})
    lines = [
        "# Screening campaign",
        "",
        (
            f"{summary['samples']} samples ({summary['valid_samples']} structurally valid) of "
            f"{sum(s['cells'] for s in summary['systems'].values())} cell compositions; "
            f"hull: {summary['hull'].get('name')}; stable: within "
            f"{summary['funnel']['stable_threshold']} eV/atom of the hull after a converged "
            "relaxation."
        ),
        "",
        "## Tiers",
        "",
        "| tier | removed |",
        "|---|---|",
        *[f"| {t} | {n} |" for t, n in removed.items()],
        "",
        (
            f"Full relaxations: {tiers.get('full_relaxations', 0)} "
            f"({_ratio(summary['throughput']['fewer_full_relaxations'])} fewer than relaxing every "
            f"valid sample); FIRE steps: {tiers.get('fire_steps', 0)}."
        ),
        (
            f"Wall time: sampling {summary['seconds'].get('sampling', 0):.0f} s, screening "
            f"{summary['seconds'].get('screening', 0):.0f} s."
        ),
        "",
    ]
    for system, out in summary["systems"].items():
        rows = ranked[system]
        lines += [f"## {system}", "",
                  (f"{out['formulas']} formulas, {out['cells']} cells screened; "
                  f"{out['candidates']} distinct candidates, {out['stable']} stable "
                  f"({out['stable_novel']} matching no known material)."), ""]  # fmt: skip
        if out.get("diagram"):
            lines += [f"![{system} hull]({out['diagram']})", ""]
        lines += [markdown_table(rows, TABLE_ROWS), ""]
        if out["written"]:
            lines += [(f"CIFs and DFT inputs (MPRelaxSet, POTCAR.spec) of the best "
                      f"{out['written']} new candidates: `systems/{system}/cif/`, "
                      f"`systems/{system}/dft/`."), ""]  # fmt: skip
    return "\n".join(lines)


def _ratio(value) -> str:
    return "-" if value is None else f"{value:.1f}x"


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, pc.Expression):
        return str(value)
    raise TypeError(type(value))
