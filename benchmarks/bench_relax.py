"""Batched FIRE relaxation vs matgl's per-crystal ``Relaxer``, side by side in one run.

The same MP-20 pilot test crystals, each expanded to +5 % volume and given 0.05 A Gaussian
displacements, are relaxed by ``relax_batch`` and by ``relax_one_by_one`` (ASE FIRE +
FrechetCellFilter) with the same fmax and step limit. Prints crystals/second for each, the
agreement of the final energies, and writes ``benchmarks/results/bench_relax.json``.

    OMP_NUM_THREADS=1 python benchmarks/bench_relax.py --n 32
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from crysray.data.csv import dataset_path, load_split
from crysray.filter.graphs import evaluate, node_types
from crysray.filter.potential import load_potential, model_name
from crysray.filter.relax import relax_batch
from crysray.filter.relax_ase import relax_one_by_one
from crysray.structures import arrays_to_structures

RESULTS = Path(__file__).resolve().parent / "results"


def perturbed_test_crystals(n: int, seed: int = 0):
    """First ``n`` pilot test crystals at +5 % volume with 0.05 A noise: (lattices, fracs, Z)."""
    table = load_split(dataset_path("mp_20_pilot", "test"))
    rng = np.random.default_rng(seed)
    lattices, fracs, numbers = [], [], []
    for b in range(n):
        atoms = slice(table.offsets[b], table.offsets[b + 1])
        lattice = table.lattice[b] * 1.05 ** (1 / 3)
        cart = table.frac_coords[atoms] @ lattice + rng.normal(0.0, 0.05, (table.num_atoms[b], 3))
        lattices.append(lattice)
        fracs.append(cart @ np.linalg.inv(lattice))
        numbers.append(table.atom_types[atoms])
    return np.stack(lattices), fracs, numbers


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def summarise(name: str, result, seconds: float, n_atoms: np.ndarray) -> dict:
    statuses = {s: result.status.count(s) for s in sorted(set(result.status))}
    row = {
        "seconds": seconds,
        "crystals_per_second": len(n_atoms) / seconds,
        "total_fire_steps": int(result.steps.sum()),
        "crystal_steps_per_second": float(result.steps.sum()) / seconds,
        "slowest_crystal_steps": int(result.steps.max()),
        "statuses": statuses,
    }
    print(
        f"{name:>12}: {seconds:7.1f} s  {row['crystals_per_second']:.3f} crystals/s  "
        f"steps {row['total_fire_steps']}  {statuses}"
    )
    return row


def evaluation_speedup(potential, lattices, fracs, numbers, repeats: int = 3) -> dict:
    """One energy+forces+stress call on all crystals vs PESCalculator crystal by crystal."""
    from matgl.ext.ase import PESCalculator
    from pymatgen.io.ase import AseAtomsAdaptor

    types = [node_types(potential, z) for z in numbers]
    cells = torch.from_numpy(lattices)
    calculator = PESCalculator(potential, stress_unit="eV/A3")
    atoms = [AseAtomsAdaptor.get_atoms(s) for s in arrays_to_structures(lattices, fracs, numbers)]

    def one_by_one():
        for a in atoms:
            calculator.calculate(a, ["energy", "forces", "stress"])

    batched = min(
        timed(lambda: evaluate(potential, cells, fracs, types))[1] for _ in range(repeats)
    )
    single = min(timed(one_by_one)[1] for _ in range(repeats))
    print(f"single evaluation of all crystals: batched {batched:.3f} s, one by one {single:.3f} s")
    return {"batched_seconds": batched, "one_by_one_seconds": single, "speedup": single / batched}


def main(
    n: int = 32,
    fmax: float = 0.05,
    relax_steps: int = 500,
    max_atoms_per_batch: int = 2000,
    threads: int = 1,
) -> dict:
    torch.set_num_threads(threads)
    warnings.filterwarnings("ignore")
    potential = load_potential()
    lattices, fracs, numbers = perturbed_test_crystals(n)
    n_atoms = np.array([len(z) for z in numbers])
    print(f"{n} crystals, {n_atoms.sum()} atoms, fmax {fmax} eV/A, <= {relax_steps} steps")
    batched, t_batch = timed(
        lambda: relax_batch(
            potential,
            lattices,
            fracs,
            numbers,
            fmax=fmax,
            relax_steps=relax_steps,
            max_atoms_per_batch=max_atoms_per_batch,
        )
    )
    structures = arrays_to_structures(lattices, fracs, numbers)
    single, t_single = timed(
        lambda: relax_one_by_one(structures, potential, fmax=fmax, relax_steps=relax_steps)
    )
    diff = np.abs(batched.energy - single.energy) / n_atoms
    report = {
        "model": model_name(potential),
        "n_crystals": n,
        "n_atoms": int(n_atoms.sum()),
        "fmax": fmax,
        "relax_steps": relax_steps,
        "max_atoms_per_batch": max_atoms_per_batch,
        "torch_threads": torch.get_num_threads(),
        "device": str(next(potential.parameters()).device),
        "machine": platform.processor() or platform.machine(),
        "batched": summarise("batched", batched, t_batch, n_atoms),
        "one_by_one": summarise("one_by_one", single, t_single, n_atoms),
        "speedup": t_single / t_batch,
        "energy_abs_diff_per_atom": {
            "max": float(np.nanmax(diff)),
            "mean": float(np.nanmean(diff)),
        },
        "same_steps": int((batched.steps == single.steps).sum()),
        "single_evaluation": evaluation_speedup(potential, lattices, fracs, numbers),
    }
    worst = report["energy_abs_diff_per_atom"]["max"]
    print(
        f"speedup {report['speedup']:.2f}x; |dE| per atom max {worst:.2e} eV;"
        f" identical step counts {report['same_steps']}/{n}"
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"bench_relax_{threads}thread.json").write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--fmax", type=float, default=0.05)
    parser.add_argument("--relax-steps", type=int, default=500)
    parser.add_argument("--max-atoms-per-batch", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both relaxers")
    args = parser.parse_args()
    main(args.n, args.fmax, args.relax_steps, args.max_atoms_per_batch, args.threads)
