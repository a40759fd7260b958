"""Can the funnel's "stable" flag be trusted? Measured on held-out Materials Project crystals.

Sample: MPTS-52 val crystals of at most 20 atoms, balanced: ``--n`` DFT-stable (MP
``energy_above_hull`` <= 0.1 eV/atom) and ``--n`` DFT-unstable ones (fixed seed). Nothing in
crysray is fitted on them, and they are left out of the ``local`` hull they are scored on.

Reported:

* formation energy vs DFT (MAE, median, r): single points on the DFT structures, and after the
  funnel's relaxation (default FunnelConfig), both through MaterialsProject2020Compatibility
  and the MP elemental references (crysray.filter.energy);
* the stable call (e_above_hull <= 0.1) against DFT with the ``local`` hull: agreement, how
  many DFT-unstable crystals pass; and, as the ceiling the hull's sparsity allows, the same
  call made with the exact DFT formation energies on the same hull;
* coverage: reference compounds in each crystal's chemical system;
* per-crystal values in results/funnel_accuracy_crystals.csv.

    python benchmarks/bench_funnel_accuracy.py --n 100
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from crysray.data.csv import dataset_path
from crysray.filter.config import FunnelConfig
from crysray.filter.energy import corrected_energy, load_elemental_references
from crysray.filter.funnel import run_funnel
from crysray.filter.graphs import single_point_energies
from crysray.filter.hull import STABLE_THRESHOLD
from crysray.filter.local_hull import LocalHull
from crysray.filter.potential import load_potential, model_name
from crysray.structures import parse_cif

RESULTS = Path(__file__).resolve().parent / "results"


def balanced_sample(n: int, seed: int = 0) -> pd.DataFrame:
    frame = pd.read_csv(dataset_path("mpts_52", "val"), dtype={"material_id": str})
    frame["structure"] = [parse_cif(c) for c in frame["cif"]]
    frame = frame[[len(s) <= 20 for s in frame["structure"]]]
    stable = frame[frame["energy_above_hull"] <= STABLE_THRESHOLD]
    unstable = frame[frame["energy_above_hull"] > STABLE_THRESHOLD]
    picks = [part.sample(n, random_state=seed) for part in (stable, unstable)]
    return pd.concat(picks, ignore_index=True)


def errors(predicted: np.ndarray, truth: np.ndarray) -> dict:
    ok = np.isfinite(predicted) & np.isfinite(truth)
    err = predicted[ok] - truth[ok]
    return {"n": int(ok.sum()), "mae": float(np.abs(err).mean()),
            "median_ae": float(np.median(np.abs(err))), "mean_error": float(err.mean()),
            "pearson_r": float(np.corrcoef(predicted[ok], truth[ok])[0, 1])}  # fmt: skip


def stable_call(e_hull: np.ndarray, dft_e_hull: np.ndarray) -> dict:
    have = np.isfinite(e_hull)
    called, truth = e_hull[have] <= STABLE_THRESHOLD, dft_e_hull[have] <= STABLE_THRESHOLD
    return {"n": int(have.sum()), "agreement": float(np.mean(called == truth)),
            "dft_unstable_called_stable": int((called & ~truth).sum()),
            "dft_unstable": int((~truth).sum()),
            "dft_stable_called_unstable": int((~called & truth).sum()),
            "dft_stable": int(truth.sum())}  # fmt: skip


def main(n: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    warnings.filterwarnings("ignore")
    sample = balanced_sample(n)
    structures = sample["structure"].tolist()
    dft_ef = sample["formation_energy_per_atom"].to_numpy()
    dft_hull = sample["energy_above_hull"].to_numpy()
    potential, refs = load_potential(device="cpu"), load_elemental_references()
    start = time.perf_counter()
    hull = LocalHull.build(exclude=set(sample["material_id"]))
    hull_seconds = time.perf_counter() - start

    start = time.perf_counter()
    sp = single_point_energies(potential, np.stack([s.lattice.matrix for s in structures]),
                               [s.frac_coords for s in structures],
                               [np.array(s.atomic_numbers) for s in structures])  # fmt: skip
    ef_sp = np.array([refs.formation_energy_per_atom(s.composition, corrected_energy(s, e))
                      for s, e in zip(structures, sp)])  # fmt: skip
    sp_seconds = time.perf_counter() - start

    table = pa.table({
        "sample_id": sample["material_id"].tolist(),
        "atomic_numbers": [list(s.atomic_numbers) for s in structures],
        "frac_coords": [s.frac_coords.reshape(-1).tolist() for s in structures],
        "lattice": [s.lattice.matrix.reshape(-1).tolist() for s in structures],
    })  # fmt: skip
    config = FunnelConfig(hull="local")
    out, counts = run_funnel(table, config, potential=potential, hull=hull, references=refs,
                             stages=("structure", "relax", "hull"))  # fmt: skip
    ef_relaxed = np.array(out["formation_energy_per_atom"].to_pylist(), dtype=float)
    e_hull = np.array(out["e_above_hull"].to_pylist(), dtype=float)
    totals = [dft * s.composition.num_atoms + sum(k * refs.energies[el.symbol]
              for el, k in s.composition.items())
              for s, dft in zip(structures, dft_ef)]  # fmt: skip
    e_hull_exact = np.array([hull.e_above_hull(s.composition, t).e_above_hull
                             for s, t in zip(structures, totals)])  # fmt: skip
    phases = np.array(out["hull_reference_phases"].to_pylist(), dtype=float)
    report = {
        "machine": f"{platform.processor() or platform.machine()}, {threads} torch thread(s)",
        "model": model_name(potential),
        "sample": f"MPTS-52 val, <= 20 atoms, {n} with DFT E_hull <= 0.1 and {n} above (seed 0)",
        "funnel_config": config.as_dict(),
        "local_hull": {**hull.describe(), "build_seconds": hull_seconds},
        "formation_energy_single_point": {**errors(ef_sp, dft_ef), "seconds": sp_seconds},
        "formation_energy_relaxed": errors(ef_relaxed, dft_ef),
        "relax_status": counts.get("relax_status"),
        "stable_call_local_hull": stable_call(e_hull, dft_hull),
        "stable_call_exact_dft_energy_same_hull": stable_call(e_hull_exact, dft_hull),
        "reference_compounds_per_crystal": {
            "median": float(np.nanmedian(phases)),
            "zero": int((phases == 0).sum()),
            "under_5": int((phases < 5).sum()),
        },
        "stage_seconds": counts["seconds"],
    }
    print(json.dumps(report, indent=2, default=str))
    RESULTS.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(
        {
            "material_id": sample["material_id"],
            "formula": [s.composition.reduced_formula for s in structures],
            "dft_formation_energy_per_atom": dft_ef,
            "dft_e_above_hull": dft_hull,
            "formation_energy_single_point": ef_sp,
            "formation_energy_relaxed": ef_relaxed,
            "e_above_hull": e_hull,
            "e_above_hull_exact_energy": e_hull_exact,
            "reference_compounds": phases,
            "relax_status": out["relax_status"].to_pylist(),
        }
    ).to_csv(RESULTS / "funnel_accuracy_crystals.csv", index=False, float_format="%.4f")
    (RESULTS / "funnel_accuracy.json").write_text(json.dumps(report, indent=2, default=str))
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100, help="crystals per class (stable/unstable)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    main(args.n, args.threads)
