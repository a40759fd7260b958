"""What a funnel actor's memory holds, and what bounds it.

Each configuration runs in a fresh process (peak RSS is per process) that builds the funnel
actor exactly as a run does (``StabilityFunnel``: potential, local hull, training set of
known crystals) and sends ``--crystals`` perturbed MP-20 pilot test crystals through it
(bench_relax.perturbed_test_crystals: +5 % volume, 0.05 A noise); the resident set size is
read after each step of the set-up and after the funnel, with the peak (``ru_maxrss``).
``max_atoms_per_batch`` (atoms per batched MatGL call) is varied: the relaxation's graphs,
three-body lists and their gradients scale with it.

    python benchmarks/bench_funnel_memory.py --crystals 256

Appends one line per configuration to ``benchmarks/results/funnel_memory.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
BATCHES = (2000, 1000, 500, 250)


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(crystals: int, max_atoms: int, training: str) -> dict:
    """One configuration, in this process."""
    import warnings

    warnings.filterwarnings("ignore")
    import pyarrow as pa
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_relax import perturbed_test_crystals

    from crysray.data.csv import dataset_path
    from crysray.filter.actor import StabilityFunnel
    from crysray.filter.config import FunnelConfig

    steps = {"imports": rss_mb()}
    config = FunnelConfig(hull="local", max_atoms_per_batch=max_atoms,
                          training_dataset=str(dataset_path(training, "train")))  # fmt: skip
    funnel = StabilityFunnel(config, stages=("structure", "relax", "hull"))
    steps["potential_and_hull"] = rss_mb()
    funnel_novel = StabilityFunnel(config, stages=("novel",))
    steps["training_set"] = rss_mb()
    lattices, fracs, numbers = perturbed_test_crystals(crystals)
    table = pa.table({
        "sample_id": [str(i) for i in range(crystals)],
        "atomic_numbers": [z.tolist() for z in numbers],
        "frac_coords": [f.reshape(-1).tolist() for f in fracs],
        "lattice": [m.reshape(-1).tolist() for m in lattices],
    })  # fmt: skip
    start = time.perf_counter()
    out = funnel(table)
    seconds = time.perf_counter() - start
    steps["after_funnel"] = rss_mb()
    funnel_novel(table)
    steps["after_novelty"] = rss_mb()
    return {
        "max_atoms_per_batch": max_atoms, "crystals": crystals,
        "atoms": int(sum(len(z) for z in numbers)), "rss_mb": steps,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "funnel_seconds": seconds, "converged": out["relax_status"].to_pylist().count("converged"),
        "training_dataset": training,
    }  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--crystals", type=int, default=256)
    p.add_argument("--training", default="mp_20_reduced")
    p.add_argument("--batches", type=int, nargs="+", default=list(BATCHES))
    p.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # child process
    args = p.parse_args()
    if args.one is not None:
        print(json.dumps(measure(args.crystals, args.one, args.training)))
        return
    RESULTS.mkdir(exist_ok=True)
    for batch in args.batches:
        child = subprocess.run([sys.executable, __file__, "--crystals", str(args.crystals),
                                "--training", args.training, "--one", str(batch)],
                               capture_output=True, text=True, check=True)  # fmt: skip
        line = {"benchmark": "funnel_memory", **json.loads(child.stdout.splitlines()[-1]),
                "machine": platform.machine(), "torch_threads": 1}  # fmt: skip
        print(json.dumps(line))
        with open(RESULTS / "funnel_memory.jsonl", "a") as f:
            f.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
