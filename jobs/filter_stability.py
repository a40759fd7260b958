"""Run the MatGL stability funnel over a sampling run directory (resumable, exactly once).

    python jobs/filter_stability.py --run outputs/perov5_csp

Per work unit: structural validity, SMACT composition validity, novelty against the training
set, batched MatGL relaxation and energy above the reference hull (funnel/unit-*.parquet);
then run-wide uniqueness and the S.U.N. count (funnel/unique.parquet, funnel/summary.json).
The same stage runs inside jobs/mass_sample.py with --funnel.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def add_funnel_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("stability funnel")
    g.add_argument("--funnel-replicas", type=int, default=1, help="MatGL actors (sized apart from samplers)")
    g.add_argument("--funnel-cpus", type=float, default=None, help="CPUs per funnel actor")
    g.add_argument("--funnel-gpus", type=float, default=None, help="GPUs per funnel actor (default: 1 if any)")
    g.add_argument("--potential", default=None, help="MatGL model name or folder (default: CRYSRAY_MATGL_MODEL "
                                                     "or M3GNet-MP-2021.2.8-PES; see crysray/resources.py)")
    g.add_argument("--training-dataset", type=Path, default=None,
                   help="CSV split of known crystals for novelty (default: Perov-5 train)")
    g.add_argument("--reference-datasets", type=Path, nargs="+", default=None,
                   help="CSV splits with formation energies for the hull (default: the MP-20 pilot "
                        "files; see crysray/filter/reference.py)")
    g.add_argument("--relax-steps", type=int, default=300)
    g.add_argument("--fmax", type=float, default=0.05, help="force convergence, eV/A")
    g.add_argument("--stable-threshold", type=float, default=0.1, help="eV/atom above hull")


def funnel_options(args) -> dict:
    from crysray.data.csv import dataset_path

    if args.relax_steps < 1 or args.fmax <= 0 or args.funnel_replicas < 1:
        raise ValueError("--relax-steps, --fmax and --funnel-replicas must be positive")
    training = args.training_dataset or dataset_path("perov_5", "train")
    if not Path(training).is_file():
        raise FileNotFoundError(f"training dataset not found: {training}")
    references = [str(p) for p in args.reference_datasets] if args.reference_datasets else None
    return {"model": args.potential, "training_dataset": str(training), "reference_datasets": references,
            "relax_steps": args.relax_steps,
            "fmax": args.fmax, "stable_threshold": args.stable_threshold}


def prepare_reference(options: dict) -> None:
    """Build (or load) the hull reference once, before many actors would each build it."""
    from crysray.filter.potential import load_potential
    from crysray.filter.reference import build_reference

    build_reference(load_potential(options["model"]), options["reference_datasets"])


def add_funnel_stage(dataset, args, run_dir: Path, cluster: dict):
    """Append the funnel actor pool to a Ray Data pipeline of {"unit": ...} rows."""
    import ray

    from crysray.filter.campaign import FunnelUnitWorker

    gpus = args.funnel_gpus if args.funnel_gpus is not None else (1.0 if cluster.get("GPU", 0) >= 1 else 0.0)
    cpus = args.funnel_cpus or (1.0 if gpus else max(0.25, (cluster.get("CPU", 1) - 0.5) / args.funnel_replicas))
    return dataset.map_batches(
        FunnelUnitWorker, batch_size=1, compute=ray.data.ActorPoolStrategy(size=args.funnel_replicas),
        num_cpus=cpus, num_gpus=gpus, max_restarts=-1, max_task_retries=-1,
        fn_constructor_kwargs={"run_dir": str(run_dir.resolve()), **funnel_options(args),
                               "torch_threads": max(1, int(cpus))},
    )


def run(args) -> dict:
    import ray

    from crysray.filter.campaign import finalize_run, pending_funnel_units, sampled_units

    run_dir = args.run
    if not (run_dir / "manifest.json").is_file():
        raise FileNotFoundError(f"{run_dir} is not a crysray sampling run (no manifest.json)")
    if not sampled_units(run_dir):
        raise ValueError(f"{run_dir} holds no sampled work units yet")
    options = funnel_options(args)
    prepare_reference(options)
    todo = pending_funnel_units(run_dir)
    start = time.perf_counter()
    if todo:
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        ray.init(address=os.environ.get("RAY_ADDRESS"), log_to_driver=False)
        units = ray.data.from_items([{"unit": u} for u in todo], override_num_blocks=len(todo))
        for _ in add_funnel_stage(units, args, run_dir, ray.cluster_resources()).iter_rows():
            pass
    counts = finalize_run(run_dir)
    return {**counts, "units_filtered_now": len(todo), "wall_seconds": time.perf_counter() - start}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="output directory of jobs/mass_sample.py")
    add_funnel_arguments(p)
    args = p.parse_args(argv)
    try:
        summary = run(args)
    except (ValueError, FileNotFoundError, OSError) as err:
        print(f"filter_stability: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
