"""Chemical-system rediscovery: does a campaign, given only system names, return the known
DFT ground states as stable candidates? And what did its tiers cost and lose?

Targets: the DFT ground states (``e_above_hull == 0``) of an MP-20 split (``--split``, default
the pilot test) with two or three elements, a cell of at most ``--max-atoms`` atoms, and a
material id in no training split of the shipped models (mp_20_csp, mp_20_reduced,
mp_20_pilot train). Their chemical systems are taken in one fixed order (a permutation by
``numpy.random.default_rng(2026)``, drawn before any result), the first ``--systems`` of
them; every target of a chosen system counts. The targets (every row of each material) are
left out of the campaign's hull and known materials (``--hull-exclude``), the other known
phases stay.

The campaign runs exactly as a user runs it (``crysray.command.campaign.campaign``, local
hull, shipped Materials Project model), then:

- found: a candidate of the target's formula that is stable (converged, within the funnel's
  ``stable_threshold`` of the hull) and matches the target (E2's matcher, ``candidate_rms``);
- relaxing everything: every sample of the target's formula that a tier removed is relaxed
  fully from its raw structure (``relax_arrays``, the funnel's settings) and placed on the same
  hull; a target found that way but not by the campaign is a rediscovery the tiers lost,
  charged to the tier that removed its matching samples;
- throughput: samples per core-second of the campaign (sampling + screening wall time x
  cores) next to today's funnel, which relaxes every valid sample fully (its cost per sample
  measured on the same machine by the relax-everything step, per core).

    python benchmarks/bench_campaign.py --systems 20 --max-atoms 6 --k 32

Appends one line to ``benchmarks/results/campaign_rediscovery.jsonl``; the campaign's run
directory (``--work``) is resumable.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import torch
from pymatgen.core import Composition

from crysray.command.campaign import campaign
from crysray.data.csv import load_split
from crysray.eval.csp import candidate_rms
from crysray.filter.config import FunnelConfig
from crysray.filter.funnel import hull_values, relax_arrays
from crysray.resources import dataset_file
from crysray.screen.stage import load_models, screened_table
from crysray.structures import arrays_to_structure, parse_cif, table_arrays

RESULTS = Path(__file__).resolve().parent / "results"
ORDER_SEED = 2026
TRAINING_SPLITS = (("mp_20_csp", "train"), ("mp_20_reduced", "train"), ("mp_20_pilot", "train"))
REMOVING_TIERS = ("duplicate", "prerelax_failed", "prerelax_energy", "prerelax_hull")


def select_targets(split: str, max_atoms: int, systems: int) -> pd.DataFrame:
    """The benchmark's ground states: material_id, formula, chemsys, cif (see module doc)."""
    rows = pd.read_csv(dataset_file("mp_20_pilot", split), dtype={"material_id": str})
    trained = set()
    # the pilot val materials are in mp_20_reduced train (the DNG models'), never in the CSP
    # model's split: val targets (for choosing settings) need only be new to the CSP model
    for name, part in TRAINING_SPLITS if split == "test" else TRAINING_SPLITS[:1]:
        trained |= set(load_split(dataset_file(name, part), workers=1).material_id)
    rows = rows[(rows["e_above_hull"] == 0) & ~rows["material_id"].isin(trained)].copy()
    rows["formula"] = [Composition(f).reduced_formula for f in rows["pretty_formula"]]
    rows["chemsys"] = ["-".join(sorted(el.symbol for el in Composition(f).elements))
                       for f in rows["formula"]]  # fmt: skip
    rows["atoms"] = [len(parse_cif(c)) for c in rows["cif"]]
    rows = rows[rows["chemsys"].str.count("-").isin([1, 2]) & (rows["atoms"] <= max_atoms)]
    names = sorted(rows["chemsys"].unique())
    order = [names[i] for i in np.random.default_rng(ORDER_SEED).permutation(len(names))]
    chosen = order[:systems]
    return rows[rows["chemsys"].isin(chosen)].reset_index(drop=True), chosen


def evaluate(table, targets: pd.DataFrame, funnel: FunnelConfig, models) -> tuple[list, dict]:
    """Per target: found by the campaign, found by relaxing everything, and where it was lost."""
    records, relax_all = [], {"relaxations": 0, "seconds": 0.0, "fire_steps": 0}
    for t in targets.itertuples():
        target = parse_cif(t.cif)
        rows = table.filter(pc.equal(table["formula"], t.formula))
        tiers = rows["tier"].to_pylist()
        found = _found(rows, [i for i, x in enumerate(tiers) if x == "candidate"], target, funnel)
        also = _found(rows, [i for i, x in enumerate(tiers) if x == "relaxed_duplicate"],
                      target, funnel, stable_of_row=True)  # fmt: skip
        removed = [i for i, x in enumerate(tiers) if x in REMOVING_TIERS]
        start = time.perf_counter()
        relaxed = relax_arrays([table_arrays(rows)[i] for i in removed], models.potential, funnel)
        relax_all["seconds"] += time.perf_counter() - start
        relax_all["relaxations"] += len(removed)
        relax_all["fire_steps"] += sum(r.steps for r in relaxed)
        lost_in = sorted({tiers[i] for i, r in zip(removed, relaxed)
                          if _stable_match(r, target, funnel, models)})  # fmt: skip
        records.append({
            "material_id": t.material_id, "formula": t.formula, "chemsys": t.chemsys,
            "atoms": int(t.atoms), "samples": rows.num_rows,
            "enumerated": rows.num_rows > 0, "found": bool(found),
            "found_by_relaxed_duplicate": bool(also),
            "found_relaxing_everything": bool(found or also or lost_in),
            "lost_in": [] if found or also else lost_in,
        })  # fmt: skip
    return records, relax_all


def _found(rows, idx, target, funnel, stable_of_row=False) -> bool:
    """Any of rows ``idx`` (relaxed) stable and matching ``target``."""
    if not idx:
        return False
    picked = rows.take(idx)
    e_hull = picked["e_above_hull"].to_pylist()
    ok = [e is not None and e <= funnel.stable_threshold for e in e_hull]
    if not stable_of_row:
        ok = [bool(s) for s in picked["stable"].to_pylist()]
    arrays = table_arrays(picked, prefix="relaxed_")
    structures = [arrays_to_structure(*a) if a is not None and good else None
                  for a, good in zip(arrays, ok)]  # fmt: skip
    if not any(s is not None for s in structures):
        return False
    return any(r is not None for r in candidate_rms([structures], [target], workers=1)[0])


def _stable_match(relaxed, target, funnel, models) -> bool:
    if relaxed.status != "converged" or relaxed.energy_per_atom is None:
        return False
    e = hull_values(relaxed, models.hull, models.references).e_above_hull
    if e is None or e > funnel.stable_threshold:
        return False
    s = arrays_to_structure(relaxed.lattice, relaxed.frac_coords, relaxed.atomic_numbers)
    return candidate_rms([[s]], [target], workers=1)[0][0] is not None


SWEEP_STEPS = (1, 5, 10, 20)
SWEEP_KEEP = (1, 2, 4, 8)
SWEEP_WINDOW = (0.05, 0.1, 0.2, None)  # None: no window


def sweep(table, targets: pd.DataFrame, funnel: FunnelConfig, models) -> dict:
    """What other tier settings would have cost and lost, measured on the targets' formulas.

    Every distinct valid sample of a target's formula is pre-relaxed for each of SWEEP_STEPS
    FIRE steps and, separately, relaxed fully from its raw structure (is it a stable match of
    the target?). A setting (steps, keep, window) finds a target when a stable match is among
    the ``keep`` lowest pre-relaxed energies of its formula within ``window`` eV/atom of the
    best; its cost is the pre-relaxation steps plus the full relaxations it keeps.
    """
    per_target = []
    for t in targets.itertuples():
        target = parse_cif(t.cif)
        rows = table.filter(pc.equal(table["formula"], t.formula))
        tiers = rows["tier"].to_pylist()
        distinct = [i for i, x in enumerate(tiers) if x not in ("structure", "duplicate")]
        arrays = [table_arrays(rows)[i] for i in distinct]
        energies = {s: [r.energy_per_atom for r in relax_arrays(arrays, models.potential, funnel,
                                                                relax_steps=s)]
                    for s in SWEEP_STEPS}  # fmt: skip
        full = relax_arrays(arrays, models.potential, funnel)
        matches = [_stable_match(r, target, funnel, models) for r in full]
        valid = sum(x != "structure" for x in tiers)
        per_target.append({"material_id": t.material_id, "valid": valid,
                           "energies": {str(k): v for k, v in energies.items()},
                           "stable_match": matches,
                           "full_steps": [r.steps for r in full]})  # fmt: skip
    grid = []
    for steps in SWEEP_STEPS:
        for keep in SWEEP_KEEP:
            for window in SWEEP_WINDOW:
                found = kept = valid = 0
                for rec in per_target:
                    e = [np.inf if v is None else v for v in rec["energies"][str(steps)]]
                    order = np.argsort(e, kind="stable")
                    best = e[order[0]] if len(e) else np.inf
                    limit = best + (window if window is not None else np.inf)
                    chosen = [i for r, i in enumerate(order) if r < keep and e[i] <= limit]
                    found += any(rec["stable_match"][i] for i in chosen)
                    kept += len(chosen)
                    valid += rec["valid"]
                share = kept / max(valid, 1)
                grid.append({"steps": steps, "keep": keep, "window": window, "found": found,
                             "full_relaxations_per_valid_sample": share})  # fmt: skip
    found_all = sum(any(r["stable_match"]) for r in per_target)
    return {"targets": len(per_target), "found_relaxing_everything": found_all,
            "grid": grid, "per_target": per_target}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--split", default="test", choices=["val", "test"])
    p.add_argument("--systems", type=int, default=20)
    p.add_argument("--max-atoms", type=int, default=6)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--model", default="mp")
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--funnel-replicas", type=int, default=2)
    p.add_argument(
        "--work",
        type=Path,
        default=None,
        help="campaign directory (default outputs/bench_campaign-<split>-...)",
    )
    p.add_argument("--tag", default="")
    p.add_argument(
        "--max-atoms-per-batch",
        type=int,
        default=FunnelConfig.max_atoms_per_batch,
        help="atoms per MatGL call (the val run was made with 2000, then the default)",
    )
    p.add_argument(
        "--sweep",
        action="store_true",
        help="also measure other tier settings on the targets' formulas "
        "(campaign_tier_sweep-<split>.json); for choosing defaults on val",
    )
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    targets, systems = select_targets(args.split, args.max_atoms, args.systems)
    work = args.work or Path("outputs") / (f"bench_campaign-{args.split}-s{args.systems}"
                                           f"-m{args.max_atoms}-k{args.k}{args.tag}")  # fmt: skip
    work.parent.mkdir(parents=True, exist_ok=True)
    exclude = work.parent / f"{work.name}-hull-exclude.csv"
    exclude.write_text("".join(f"{m},{f}\n" for m, f in zip(targets.material_id, targets.formula)))
    start = time.perf_counter()
    summary = campaign(chemsys=systems, out=str(work.resolve()), max_atoms=args.max_atoms,
                       samples_per_composition=args.k, checkpoint=args.model,
                       replicas=args.replicas, funnel_replicas=args.funnel_replicas,
                       hull_exclude=exclude,
                       max_atoms_per_batch=args.max_atoms_per_batch)  # fmt: skip
    wall = time.perf_counter() - start
    torch.set_num_threads(1)
    funnel = FunnelConfig(**summary["funnel"])
    models = load_models(funnel, hull_exclude=dict(zip(targets.material_id, targets.formula)))
    table = screened_table(work)
    records, relax_all = evaluate(table, targets, funnel, models)
    n = len(records)
    found = sum(r["found"] for r in records)
    found_all = sum(r["found_relaxing_everything"] for r in records)
    valid = summary["valid_samples"]
    seconds_per_relaxation = relax_all["seconds"] / max(relax_all["relaxations"], 1)  # 1 thread
    cores = os.cpu_count() or 1
    campaign_rate = summary["samples"] / (sum(summary["seconds"].values()) * cores)
    line = {
        "benchmark": "campaign_rediscovery", "split": args.split, "systems": systems,
        "max_atoms": args.max_atoms, "k": args.k, "model": args.model, "targets": n,
        "binary_systems": sum(s.count("-") == 1 for s in systems),
        "found": found, "found_share": found / n if n else None,
        "found_relaxing_everything": found_all,
        "lost_by_tiers": found_all - found,
        "lost_share": (found_all - found) / found_all if found_all else None,
        "samples": summary["samples"], "valid_samples": valid,
        "full_relaxations": summary["tiers"]["full_relaxations"],
        "fewer_full_relaxations": summary["throughput"]["fewer_full_relaxations"],
        "tiers": summary["tiers"], "campaign_seconds": summary["seconds"],
        "campaign_wall_seconds": wall,
        "relax_everything_check": relax_all,
        "todays_funnel_samples_per_core_second": 1 / seconds_per_relaxation,
        "campaign_samples_per_core_second": campaign_rate,
        "throughput_ratio": campaign_rate * seconds_per_relaxation,
        "cores": cores, "machine": platform.machine(), "processor": platform.processor(),
        "per_target": records, "screen": summary["screen"], "funnel": summary["funnel"],
    }  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    if args.sweep:
        swept = sweep(table, targets, funnel, models)
        (RESULTS / f"campaign_tier_sweep-{args.split}.json").write_text(json.dumps(swept))
        line["sweep"] = {k: swept[k] for k in ("targets", "found_relaxing_everything", "grid")}
    with open(RESULTS / "campaign_rediscovery.jsonl", "a") as f:
        f.write(json.dumps(line) + "\n")
    keys = ("targets", "found", "found_share", "found_relaxing_everything", "lost_by_tiers",
            "samples", "valid_samples", "full_relaxations", "fewer_full_relaxations",
            "campaign_samples_per_core_second", "todays_funnel_samples_per_core_second",
            "throughput_ratio", "campaign_wall_seconds")  # fmt: skip
    print(json.dumps({k: line[k] for k in keys}, indent=1))


if __name__ == "__main__":
    main()
