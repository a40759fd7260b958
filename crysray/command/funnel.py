"""``crysray funnel`` (``jobs/filter_stability.py``): the MatGL stability funnel over a sampling
run (resumable, exactly once).

Per work unit: structural validity, SMACT composition validity, novelty against the training
set, batched MatGL relaxation, formation energy on the Materials Project's scale and energy
above the chosen hull (funnel/unit-*.parquet); then run-wide uniqueness and the S.U.N. count
(funnel/_unique/*.parquet, funnel/_summary.json): by default a Ray Data stage that shuffles the
candidates by reduced formula, one task per formula group (--uniqueness local decides in the
driver instead). funnel/_manifest.json records the settings and the hull. With --hull mp the
driver fetches the run's chemical systems from the Materials Project once (MP_API_KEY) into the
cache; the actors read only the cache.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from crysray.command.common import add_ray_arguments, check_location, log_file


def add_arguments(p: argparse.ArgumentParser) -> None:
    from crysray.filter.config import add_funnel_arguments

    p.add_argument("--run", required=True,
                   help="output directory or URL of a sampling run (crysray sample --out)")
    add_ray_arguments(p)
    add_funnel_arguments(p)


def run(args) -> int:
    from crysray.filter.campaign import finalize_run, pending_funnel_units

    check_location(args.run, "--run")
    store, config, hull = _open(args)
    todo = pending_funnel_units(store)
    start = time.perf_counter()
    distributed = args.uniqueness == "distributed"
    decide = None
    if todo or distributed:
        from crysray.console import Progress, quiet_stderr

        args.log_file = log_file(store, "funnel")
        print(f"Ray's own output: {args.log_file}", file=sys.stderr)
        with quiet_stderr(args.log_file, args.verbose) as terminal:
            from crysray.distributed import decide_run_distributed, filter_units, start_ray

            start_ray(args.address, verbose=args.verbose)
            if todo:
                total = _rows_in(store, todo)
                progress = Progress("filtered", total, unit="crystals", stream=terminal)
                filter_units(store, todo, config, args, on_progress=progress.update_to)
                progress.update_to(total)
                progress.close()
            decide = decide_run_distributed if distributed else None
            counts = finalize_run(store, decide)
    else:
        counts = finalize_run(store)
    summary = {**counts, "hull": hull, "units_filtered_now": len(todo),
               "wall_seconds": time.perf_counter() - start}  # fmt: skip
    print(json.dumps(summary, indent=1))
    return 0


def _rows_in(store, units: list[int]) -> int:
    """Crystals in the sampled units (from the Parquet footers: no rows are read)."""
    from crysray.sample.campaign import unit_key

    return store.dataset([unit_key(u) for u in units]).count_rows()


def _open(args):
    """The run, its funnel settings and hull; the funnel manifest written (or checked)."""
    from crysray.data.csv import dataset_path
    from crysray.filter.campaign import open_funnel, sampled_units
    from crysray.filter.config import funnel_config_from_args
    from crysray.filter.hulls import prepare_hull
    from crysray.sample.campaign import unit_key
    from crysray.storage import Storage

    store = Storage(args.run)  # a bad URL or a missing bucket fails here, before Ray
    if not store.exists("manifest.json"):
        raise FileNotFoundError(f"{store} is not a crysray sampling run (no manifest.json)")
    sampled = sampled_units(store)
    if not sampled:
        raise ValueError(f"{store} holds no sampled work units yet")
    # runs written before the manifest named its dataset sampled Perov-5 models only
    dataset = json.loads(store.read_text("manifest.json")).get("dataset") or "perov_5"
    config = funnel_config_from_args(args, dataset_path(dataset, "train"))
    formulas = store.dataset([unit_key(u) for u in sampled]).to_table(columns=["formula"])
    hull = prepare_hull(config, set(formulas["formula"].to_pylist()), args.mp_api_key)
    open_funnel(store, config, hull)
    return store, config, hull
