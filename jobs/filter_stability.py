"""Run the MatGL stability funnel over a sampling run directory (resumable, exactly once).

    python jobs/filter_stability.py --run outputs/perov5_csp [--hull mp|local] [--offline]
    python jobs/filter_stability.py --run s3://my-bucket/campaign1 --hull local

Per work unit: structural validity, SMACT composition validity, novelty against the training
set, batched MatGL relaxation, formation energy on the Materials Project's scale and energy
above the chosen hull (funnel/unit-*.parquet); then run-wide uniqueness and the S.U.N. count
(funnel/unique/*.parquet, funnel/summary.json): by default a Ray Data stage that shuffles the
candidates by reduced formula, one task per formula group (--uniqueness local decides in the
driver instead). funnel/manifest.json records the settings and the hull. With --hull mp the
driver fetches the run's chemical systems from the Materials Project once (MP_API_KEY) into the
cache; the actors read only the cache. The same stage runs
inside jobs/mass_sample.py with --funnel.
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


def parse_args(argv=None) -> argparse.Namespace:
    from crysray.filter.config import add_funnel_arguments

    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--run", required=True, help="output directory or URL of jobs/mass_sample.py")
    add_funnel_arguments(p)
    return p.parse_args(argv)


def run(args) -> dict:
    import ray

    from crysray.data.csv import dataset_path
    from crysray.distributed import add_funnel_stage, decide_run_distributed
    from crysray.filter.campaign import (
        finalize_run,
        open_funnel,
        pending_funnel_units,
        sampled_units,
    )
    from crysray.filter.config import funnel_config_from_args
    from crysray.filter.hulls import prepare_hull
    from crysray.sample.campaign import unit_key
    from crysray.storage import Storage

    run_dir = Storage(args.run)  # a bad URL or a missing bucket fails here, before Ray
    if not run_dir.exists("manifest.json"):
        raise FileNotFoundError(f"{run_dir} is not a crysray sampling run (no manifest.json)")
    sampled = sampled_units(run_dir)
    if not sampled:
        raise ValueError(f"{run_dir} holds no sampled work units yet")
    # runs written before the manifest named its dataset sampled Perov-5 models only
    dataset = json.loads(run_dir.read_text("manifest.json")).get("dataset") or "perov_5"
    config = funnel_config_from_args(args, dataset_path(dataset, "train"))
    formulas = run_dir.dataset([unit_key(u) for u in sampled]).to_table(columns=["formula"])
    hull = prepare_hull(config, set(formulas["formula"].to_pylist()), args.mp_api_key)
    open_funnel(run_dir, config, hull)
    todo = pending_funnel_units(run_dir)
    start = time.perf_counter()
    distributed = args.uniqueness == "distributed"
    if todo or distributed:
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        ray.init(address=os.environ.get("RAY_ADDRESS"), log_to_driver=False)
    if todo:
        units = ray.data.from_items([{"unit": u} for u in todo], override_num_blocks=len(todo))
        stage = add_funnel_stage(
            units,
            config,
            run_dir,
            args.funnel_replicas,
            args.funnel_cpus,
            args.funnel_gpus,
        )
        for _ in stage.iter_rows():
            pass
    counts = finalize_run(run_dir, decide_run_distributed if distributed else None)
    return {
        **counts,
        "hull": hull,
        "units_filtered_now": len(todo),
        "wall_seconds": time.perf_counter() - start,
    }


def main(argv=None) -> int:
    from crysray.mp import MPError

    args = parse_args(argv)
    try:
        summary = run(args)
    except (ValueError, FileNotFoundError, OSError, MPError) as err:
        print(f"filter_stability: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
