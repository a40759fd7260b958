"""Accuracy and throughput of the stability funnel on the MP-20 pilot TEST split.

The test split is not part of the hull reference (crysray.filter.reference.DEFAULT_DATASETS).
Each test crystal goes through the whole funnel (novelty against the pilot train split);
every structurally valid crystal is relaxed (``relax_gate=("structure",)``) so that each gets
a predicted formation energy. Reported:

* formation energy MAE / median / Pearson r vs DFT ``formation_energy_per_atom`` (target MAE
  <= 0.08 eV/atom), after relaxation, and for single points on the DFT structures;
* agreement of the stable call (e_above_hull <= 0.1 eV/atom) with the DFT ``e_above_hull``
  (target >= 90 %). Every MP-20 crystal has DFT e_above_hull < 0.08, so this is the share
  called stable; we also report the agreement with the call that the *DFT* formation energy
  gets on the same reference hull, which isolates the model error from hull sparsity;
* crystals/second of every stage.

    OMP_NUM_THREADS=1 python benchmarks/bench_funnel_accuracy.py --n 200
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from pymatgen.core import Composition

from crysray.data.csv import dataset_path, load_split
from crysray.filter.funnel import run_funnel
from crysray.filter.graphs import single_point_energies
from crysray.filter.hull import STABLE_THRESHOLD
from crysray.filter.potential import load_potential, model_name
from crysray.filter.reference import DEFAULT_DATASETS, build_reference, reference_entries
from crysray.filter.uniqueness import TrainingSet

RESULTS = Path(__file__).resolve().parent / "results"


def test_table(n: int):
    """The first n test crystals as funnel input rows, plus their DFT values."""
    path = dataset_path("mp_20_pilot", "test")
    entries = reference_entries(path, path.read_bytes(), n)
    table = pa.table(
        {
            "sample_id": entries["material_id"].to_list(),
            "atomic_numbers": [z.tolist() for z in entries["atomic_numbers"]],
            "frac_coords": [f.reshape(-1).tolist() for f in entries["frac_coords"]],
            "lattice": [lat.reshape(-1).tolist() for lat in entries["lattice"]],
        }
    )
    return table, entries


def errors(predicted: np.ndarray, truth: np.ndarray) -> dict:
    ok = np.isfinite(predicted) & np.isfinite(truth)
    err = predicted[ok] - truth[ok]
    return {
        "n": int(ok.sum()),
        "mae": float(np.abs(err).mean()),
        "median_ae": float(np.median(np.abs(err))),
        "mean_error": float(err.mean()),
        "pearson_r": float(np.corrcoef(predicted[ok], truth[ok])[0, 1]),
    }


def main(n: int = 200, relax_steps: int = 500) -> dict:
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    potential = load_potential()
    start = time.perf_counter()
    reference = build_reference(potential)
    t_reference = time.perf_counter() - start
    training = TrainingSet.from_table(load_split(dataset_path("mp_20_pilot", "train")))
    table, dft = test_table(n)
    out, counts = run_funnel(
        table,
        potential=potential,
        reference=reference,
        training_structures=training,
        relax_gate=("structure",),
        relax_steps=relax_steps,
    )
    ef_true = dft["formation_energy_per_atom"].to_numpy()
    ef_relaxed = out["formation_energy_per_atom"].to_numpy(zero_copy_only=False).astype(float)
    e_hull = out["e_above_hull"].to_numpy(zero_copy_only=False).astype(float)
    comps = [Composition(f) for f in dft["formula"]]
    sp = (
        single_point_energies(
            potential,
            np.stack(dft["lattice"].to_list()),
            dft["frac_coords"].to_list(),
            dft["atomic_numbers"].to_list(),
        )
        / dft["num_atoms"].to_numpy()
    )
    ef_sp = np.array([reference.formation_energy_per_atom(c, e) for c, e in zip(comps, sp)])
    e_hull_dft = np.array([reference.e_above_hull(c, e) for c, e in zip(comps, ef_true)])
    have = np.isfinite(e_hull)
    called = e_hull[have] <= STABLE_THRESHOLD
    report = {
        "model": model_name(potential),
        "n_test_crystals": n,
        "reference_datasets": DEFAULT_DATASETS,
        "n_reference_entries": len(reference.formulas),
        "reference_build_or_load_seconds": t_reference,
        "formation_energy_relaxed": errors(ef_relaxed, ef_true),
        "formation_energy_single_point": errors(ef_sp, ef_true),
        "stable_call": {
            "n_with_e_above_hull": int(have.sum()),
            "agreement_with_dft_e_above_hull": float(
                np.mean(called == (dft["e_above_hull"].to_numpy()[have] <= STABLE_THRESHOLD))
            ),
            "dft_stable_share": float(np.mean(dft["e_above_hull"].to_numpy() <= STABLE_THRESHOLD)),
            "agreement_with_dft_energy_on_reference_hull": float(
                np.mean(called == (e_hull_dft[have] <= STABLE_THRESHOLD))
            ),
        },
        "counts": {k: v for k, v in counts.items() if k != "seconds"},
        "crystals_per_second": {stage: n / s for stage, s in counts["seconds"].items()},
        "stage_seconds": counts["seconds"],
    }
    print(json.dumps(report, indent=2, default=str))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bench_funnel_accuracy.json").write_text(json.dumps(report, indent=2, default=str))
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--relax-steps", type=int, default=500)
    args = parser.parse_args()
    main(args.n, args.relax_steps)
