"""Generate crystals at scale: a pool of model replicas on Ray, streamed to Parquet.

Local (embedded Ray, shipped checkpoint, CSP on the Perov-5 test compositions):

    python jobs/mass_sample.py --out outputs/perov5_csp

On a cluster:

    RAY_AUTH_MODE=token ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python jobs/mass_sample.py --compositions my_formulas.txt --num-samples 1000000 \\
        --replicas 64 --gpus-per-replica 1 --out s3://my-bucket/campaign1

--out is a local directory or a URL (s3://bucket/prefix, gs://bucket/prefix, file:///path);
credentials come from the environment (e.g. AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL) of the driver
and of every Ray node, never from the URL, and are written nowhere.

Rerunning the same command on the same --out resumes: finished work units are skipped and the
final dataset holds exactly --num-samples rows with unique sample_ids.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout or a `ray job submit --working-dir .`

DEFAULT_CHECKPOINT = REPO / "checkpoints" / "crysbfn_perov5.pt"
# enough tasks per replica that the last ones end close together (short tail), few enough
# that the driver's per-task cost stays small next to the replicas' work
TASKS_PER_REPLICA = 8


def parse_args(argv=None) -> argparse.Namespace:
    from crysray.filter.config import add_funnel_arguments
    from crysray.sample.sampler import add_sampler_arguments

    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    p.add_argument(
        "--task",
        choices=["csp", "dng"],
        default=None,
        help="csp: structures for the compositions in --compositions; dng: new crystals, "
        "compositions included (default: the checkpoint's task)",
    )
    p.add_argument(
        "--num-atoms",
        type=int,
        default=None,
        help="dng: atoms per cell (default: drawn from the training split's distribution)",
    )
    p.add_argument(
        "--compositions",
        type=Path,
        default=None,
        help="text file of cell formulas (one per line), a Parquet file (column formula, "
        "optional id) or a CDVAE CSV split; default: the Perov-5 test split",
    )
    p.add_argument(
        "--max-atoms",
        type=int,
        default=None,
        help="largest cell to sample (default 200: the backbone's graph is fully connected, "
        "memory grows as atoms^2)",
    )
    p.add_argument(
        "--skip-invalid-compositions",
        action="store_true",
        help="skip and count bad lines (unknown element, too many atoms) instead of stopping",
    )
    p.add_argument(
        "--num-samples",
        type=int,
        default=None,
        help="rows to generate (default: one per composition); compositions are cycled",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="sampler steps (default: the method's, e.g. CrysBFN N = 10, KLDM 1000)",
    )
    add_sampler_arguments(p)
    p.add_argument("--batch-size", type=int, default=256, help="crystals per network call")
    p.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        default="fp32",
        help="bf16: backbone under bfloat16 autocast (fast on AMX CPUs and tensor-core GPUs)",
    )
    p.add_argument(
        "--unit-size", type=int, default=1024, help="crystals per work unit (and per file)"
    )
    p.add_argument("--replicas", type=int, default=1, help="model replicas (Ray actors)")
    p.add_argument(
        "--units-per-task",
        type=int,
        default=None,
        help="work units a replica takes in one Ray task (default: about "
        f"{TASKS_PER_REPLICA} tasks per replica; 1 = one task per unit)",
    )
    p.add_argument(
        "--cpus-per-replica",
        type=float,
        default=None,
        help="CPUs reserved per replica (default: fits the local machine, see below)",
    )
    p.add_argument(
        "--gpus-per-replica", type=float, default=None, help="default: 1 if the cluster has GPUs"
    )
    p.add_argument(
        "--threads-per-replica", type=int, default=None, help="torch threads per replica"
    )
    p.add_argument(
        "--out",
        required=True,
        help="output directory or URL, e.g. s3://bucket/prefix (created, or resumed)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--address", default=None, help="Ray address (default: RAY_ADDRESS or a local Ray)"
    )
    p.add_argument(
        "--funnel", action="store_true", help="run the MatGL stability funnel as a pipeline stage"
    )
    add_funnel_arguments(p)
    return p.parse_args(argv)


def validate(args) -> None:
    names = (
        "num_samples",
        "steps",
        "batch_size",
        "unit_size",
        "replicas",
        "units_per_task",
        "max_atoms",
        "num_atoms",
    )
    for name in names:
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")


def sampler_record(args, model_config) -> tuple[int, dict]:
    """Steps and the complete sampler options, completed and checked by the checkpoint's
    method (this job does not know which method it runs)."""
    from crysray.methods.registry import config_from_dict, method_class
    from crysray.sample.sampler import sampler_options_from_args

    method = method_class(config_from_dict(model_config))
    return args.steps or method.default_steps, method.sampler_options(
        **sampler_options_from_args(args)
    )


def plan(args, config: dict, funnel_config=None):
    """Everything checked before Ray starts: bad input fails fast with one line.

    A composition file is checked and converted on local scratch space first; it joins the
    run (compositions.parquet) only once the run directory is accepted. With the funnel, its
    hull is prepared for the compositions' chemical systems before the run directory is
    created, so a missing key or cache leaves nothing behind.
    """
    from crysray.sample.campaign import open_run
    from crysray.sample.composition_store import publish

    task = args.task or config["method"]["task"]
    if config["method"]["task"] != task:
        raise ValueError(f"{args.checkpoint} is a {config['method']['task']} model, not {task}")
    with tempfile.TemporaryDirectory(prefix="crysray-compositions-") as scratch:
        targets = dng_targets(args, config) if task == "dng" else csp_targets(args, config, scratch)
        spec = campaign_spec(args, config, task, targets)
        hull = prepare_funnel_hull(args, funnel_config, task, targets)
        todo = open_run(args.store, spec)
        if task == "csp":
            targets = publish(targets, args.store)
    if funnel_config is None:
        return spec, targets, todo
    from crysray.filter.campaign import open_funnel, pending_funnel_units

    open_funnel(args.store, funnel_config, hull)
    return spec, targets, sorted(set(todo) | set(pending_funnel_units(args.store)))


def campaign_spec(args, config: dict, task: str, targets):
    from crysray.sample.campaign import CampaignSpec
    from crysray.train.checkpoint import checkpoint_hash

    steps, sampler_options = sampler_record(args, config)
    return CampaignSpec(
        task=task,
        checkpoint_hash=checkpoint_hash(args.checkpoint),
        compositions_digest=targets.digest(),
        num_samples=args.num_samples or targets.count,
        steps=steps,
        seed=args.seed,
        unit_size=args.unit_size,
        batch_size=args.batch_size,
        precision=args.precision,
        dataset=config["data"]["dataset"],
        targets=targets.kind,
        sampler_options=sampler_options,
    )


def prepare_funnel_hull(args, funnel_config, task: str, targets):
    """The funnel's hull for the compositions' chemical systems (None without the funnel).

    Holds one reduced formula per distinct composition: for lists of tens of millions of
    distinct formulas, prefer --hull local or the funnel job after sampling.
    """
    if funnel_config is None:
        return None
    from crysray.filter.composition import composition_of
    from crysray.filter.hulls import prepare_hull

    if task == "dng" and funnel_config.hull == "mp":
        raise ValueError(
            "--funnel --hull mp needs the chemical systems before sampling, which DNG does not "
            "know; use --hull local, or run jobs/filter_stability.py on the finished run"
        )
    formulas = {
        composition_of(c.atomic_numbers).reduced_formula for c in targets.known_compositions()
    }
    return prepare_hull(funnel_config, formulas, args.mp_api_key)


def csp_targets(args, config: dict, scratch: str):
    """The checked composition list, converted to Parquet in ``scratch`` (streamed: any size)."""
    from crysray.data.csv import dataset_path
    from crysray.sample.composition_store import STORE_KEY, StoredCompositions, convert_compositions
    from crysray.sample.compositions import DEFAULT_MAX_ATOMS, CompositionLimits

    if args.num_atoms:
        raise ValueError("--num-atoms is for --task dng; CSP cells follow --compositions")
    limits = CompositionLimits(
        args.max_atoms or DEFAULT_MAX_ATOMS, config["net"]["max_atomic_number"]
    )
    converted = convert_compositions(
        args.compositions or dataset_path(config["data"]["dataset"], "test"),
        Path(scratch) / STORE_KEY,
        limits,
        args.skip_invalid_compositions,
    )
    args.skipped_compositions = sum(converted.skipped.values())
    return StoredCompositions(scratch, converted.count, converted.digest)


def dng_targets(args, config: dict):
    """Atom counts from --num-atoms or the training split's distribution in the checkpoint."""
    from crysray.sample.compositions import DEFAULT_MAX_ATOMS
    from crysray.sample.targets import AtomCountTargets

    if args.compositions or args.skip_invalid_compositions:
        raise ValueError("--compositions is for --task csp; a dng model generates compositions")
    if not args.num_samples:
        raise ValueError("--task dng needs --num-samples")
    args.skipped_compositions = 0
    max_atoms = args.max_atoms or DEFAULT_MAX_ATOMS
    if args.num_atoms:
        if args.num_atoms > max_atoms:
            raise ValueError(f"--num-atoms {args.num_atoms} is above --max-atoms {max_atoms}")
        return AtomCountTargets.fixed(args.num_atoms)
    counts = list(config["data"]["num_atoms_counts"])
    if len(counts) - 1 > max_atoms:  # cells above the limit are not drawn
        counts = counts[: max_atoms + 1]
    return AtomCountTargets(tuple(counts))


def resources(args, cluster: dict) -> dict:
    """Per-replica Ray resources.

    On a small machine, reserving a whole CPU per actor starves the tasks that feed the pool,
    so by default the replicas share all CPUs but half of one.
    """
    gpus = args.gpus_per_replica
    if gpus is None:
        gpus = 1.0 if cluster.get("GPU", 0) >= 1 else 0.0
    cpus = args.cpus_per_replica
    if cpus is None:
        cpus = 1.0 if gpus else max(0.25, (cluster.get("CPU", 1) - 0.5) / args.replicas)
    threads = args.threads_per_replica or (max(1, math.ceil(cpus)) if not gpus else None)
    return {"num_cpus": cpus, "num_gpus": gpus, "threads": threads}


def run(args) -> dict:
    import ray
    from tqdm import tqdm

    from crysray.data.csv import dataset_path
    from crysray.filter.config import funnel_config_from_args
    from crysray.sample.campaign import CampaignWorker
    from crysray.storage import Storage
    from crysray.train.checkpoint import read_checkpoint

    # validated before anything is written; defaults (compositions, novelty set) come from
    # the dataset the checkpoint was trained on
    validate(args)
    args.store = Storage(args.out)  # a bad URL or a missing bucket fails here, before Ray
    model_config = read_checkpoint(args.checkpoint)["config"]
    dataset = model_config["data"]["dataset"]
    config = funnel_config_from_args(args, dataset_path(dataset, "train")) if args.funnel else None
    spec, targets, todo = plan(args, model_config, config)
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # our own progress bar and summary
    # crysray is importable on every worker (pip install, or `ray job submit --working-dir`);
    # no runtime_env here, so Ray can use its prestarted worker processes
    ray.init(address=args.address or os.environ.get("RAY_ADDRESS"), log_to_driver=False)
    res = resources(args, ray.cluster_resources())
    start = time.perf_counter()
    arrivals = []  # (time, rows) per finished unit: steady-state throughput excludes actor start-up
    if todo:
        # Ray Data over an actor pool: one callable class per replica (the model loads once),
        # work units as rows, retries of failed actors/tasks by Ray. Each replica writes its
        # unit file itself, named by unit, so resume is a file listing and rows never pass
        # through the driver (write_parquet would name files by uuid and lose that).
        units = ray.data.from_items(
            [{"unit": u} for u in todo], override_num_blocks=num_tasks(args, len(todo))
        )
        summaries = units.map_batches(
            CampaignWorker,
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=args.replicas),
            num_cpus=res["num_cpus"],
            num_gpus=res["num_gpus"],
            fn_constructor_kwargs={
                "checkpoint": str(args.checkpoint.resolve()),
                "out_dir": args.store.location,  # absolute path, or the URL (no credentials)
                "spec": spec.__dict__,
                "targets": targets,
                "threads": res["threads"],
                "device": "cuda" if res["num_gpus"] else "cpu",
            },
            max_restarts=-1,
            max_task_retries=-1,
        )
        if args.funnel:  # MatGL stage: its own actor pool, fed unit by unit as samples land
            from crysray.distributed import add_funnel_stage

            summaries = add_funnel_stage(
                summaries,
                config,
                args.store,
                args.funnel_replicas,
                args.funnel_cpus,
                args.funnel_gpus,
            )
        with tqdm(
            total=spec.num_samples,
            initial=spec.num_samples - _rows_to_do(spec, todo),
            unit="crystal",
            disable=None,
        ) as bar:
            for summary in summaries.iter_rows():
                bar.update(int(summary["rows"]))
                arrivals.append((time.perf_counter(), int(summary["rows"])))
    seconds = time.perf_counter() - start
    from crysray.sample.campaign import record_failures

    failed = record_failures(args.store)
    if args.funnel:
        from crysray.distributed import decide_run_distributed
        from crysray.filter.campaign import finalize_run

        decide = decide_run_distributed if args.uniqueness == "distributed" else None
        print(json.dumps(finalize_run(args.store, decide)["funnel"]))
    return {
        **summarize(args.store, spec, todo, seconds),
        "steady_crystals_per_second": steady_rate(arrivals),
        "failed_units": failed,
        "skipped_compositions": args.skipped_compositions,
    }


def num_tasks(args, units: int) -> int:
    """Ray tasks the units are spread over. The driver's CPU cost is per task, not per unit,
    so thousands of units go in a few tasks per replica; a task that dies is redone, and its
    units that were already written are skipped, so larger tasks cost nothing on retry."""
    per_task = args.units_per_task or max(1, units // (args.replicas * TASKS_PER_REPLICA))
    return -(-units // per_task)


def steady_rate(arrivals: list[tuple[float, int]]) -> float:
    """Crystals/s between the first and the last finished unit (NaN with fewer than 2 units)."""
    if len(arrivals) < 2 or arrivals[-1][0] <= arrivals[0][0]:
        return float("nan")
    return sum(rows for _, rows in arrivals[1:]) / (arrivals[-1][0] - arrivals[0][0])


def _rows_to_do(spec, todo) -> int:
    return sum(spec.unit_range(u)[1] - spec.unit_range(u)[0] for u in todo)


def summarize(store, spec, todo, seconds: float) -> dict:
    import pyarrow.compute as pc

    from crysray.sample.campaign import finished_units, unit_key
    from crysray.sample.schema import SCHEMA

    finished = finished_units(store)
    table = store.dataset([unit_key(u) for u in finished], schema=SCHEMA).to_table(
        columns=["sample_id", "valid_structure"]
    )
    generated = _rows_to_do(spec, sorted(set(todo) & set(finished)))
    return {
        "rows": table.num_rows,
        "unique_ids": pc.count_distinct(table.column("sample_id")).as_py(),
        "valid_fraction": pc.mean(table.column("valid_structure").cast("float64")).as_py(),
        "generated_now": generated,
        "crystals_per_second": generated / seconds if seconds > 0 else float("nan"),
        "wall_seconds": seconds,
        "output": store.display("data"),
    }


def main(argv=None) -> int:
    from crysray.mp import MPError

    args = parse_args(argv)
    try:
        summary = run(args)
    except (ValueError, FileNotFoundError, OSError, MPError) as err:
        print(f"mass_sample: error: {err}", file=sys.stderr)
        return 2
    steady = summary["steady_crystals_per_second"]
    steady = (
        "one unit: no steady rate" if math.isnan(steady) else f"{steady:.1f} after the first unit"
    )
    lines = [
        "== crysray mass sampling ==",
        f"rows in dataset   {summary['rows']} ({summary['unique_ids']} unique sample_ids)",
        f"valid structures  {(summary['valid_fraction'] or 0):.1%}",
        (
            f"generated now     {summary['generated_now']} in {summary['wall_seconds']:.1f} s "
            f"({summary['crystals_per_second']:.1f} crystals/s end to end, {steady})"
        ),
        f"output            {summary['output']}",
    ]
    if summary["skipped_compositions"]:
        lines.append(f"skipped           {summary['skipped_compositions']} invalid compositions")
    for unit, error in summary["failed_units"].items():
        lines.append(f"FAILED unit {unit}  {error} (recorded in manifest.json)")
    print("\n".join(lines))
    return 1 if summary["failed_units"] else 0


if __name__ == "__main__":
    sys.exit(main())
