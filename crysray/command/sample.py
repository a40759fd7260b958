"""``crysray sample`` (``jobs/mass_sample.py``): a pool of model replicas on Ray, streamed to
Parquet, resumable; with ``--funnel`` the stability funnel runs as a second pool."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from crysray.command.common import add_ray_arguments, check_location, log_file
from crysray.sample.plan import TASKS_PER_REPLICA

# --model names: the shipped CSP checkpoints of the checkout
SHIPPED = {
    "perov5": Path("checkpoints") / "crysbfn_perov5.pt",
    "mp": Path("checkpoints") / "crysbfn_mp20_csp.pt",
}
CHECKPOINT_HELP = (
    "model to sample: perov5 (the shipped CrysBFN CSP model of Perov-5, the default), mp (the "
    "shipped CrysBFN CSP model of Materials Project cells of <= 20 atoms) or the path of an "
    "inference checkpoint "
    "(written by crysray-train --export; a training checkpoint.pt works too). A composition "
    "outside the model's training domain is counted and named in the summary and manifest.json"
)


def resolve_model(model: str | Path | None) -> Path:
    """The checkpoint a --model value names: a shipped model's file in the current directory
    (a job's working-dir copy), else in the checkout crysray runs from (or was pip-installed
    from); any other value is a path."""
    from crysray.resources import installed_checkout

    name = str(model or "perov5")
    if name not in SHIPPED:
        return Path(name)
    checkouts = [Path.cwd(), Path(__file__).resolve().parents[2], installed_checkout()]
    for checkout in filter(None, checkouts):
        if (checkout / SHIPPED[name]).is_file():
            return checkout / SHIPPED[name]
    return SHIPPED[name]


def add_arguments(p: argparse.ArgumentParser) -> None:
    from crysray.filter.config import add_funnel_arguments
    from crysray.sample.sampler import add_sampler_arguments

    p.add_argument("--model", "--checkpoint", dest="checkpoint", default=None,
                   help=CHECKPOINT_HELP)
    p.add_argument("--task", choices=["csp", "dng"], default=None,
                   help="csp: structures for the compositions in --compositions; dng: new "
                   "crystals, compositions included (default: the checkpoint's task)")
    p.add_argument("--num-atoms", type=int, default=None, help="dng: atoms per cell (default: "
                   "drawn from the training split's distribution)")
    p.add_argument("--compositions", type=Path, default=None,
                   help="text file of cell formulas (one per line, optional ',id'), a Parquet "
                   "file (column formula, optional id) or a CDVAE CSV split; default: the test "
                   "split of the checkpoint's dataset")
    p.add_argument("--max-atoms", type=int, default=None,
                   help="largest cell to sample (default 200: the backbone's graph is fully "
                   "connected, memory grows as atoms^2)")
    p.add_argument("--skip-invalid-compositions", action="store_true",
                   help="skip bad lines (unknown element, too many atoms), name them in the "
                   "summary and manifest.json, instead of stopping")
    p.add_argument("--num-samples", type=int, default=None,
                   help="rows to generate (default: one per composition); compositions cycle")
    p.add_argument("--steps", type=int, default=None,
                   help="sampler steps (default: the method's, e.g. CrysBFN N = 10, KLDM 1000)")
    add_sampler_arguments(p)
    p.add_argument("--batch-size", type=int, default=256, help="crystals per network call")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="bf16: backbone under bfloat16 autocast (AMX CPUs, tensor-core GPUs)")
    p.add_argument("--unit-size", type=int, default=1024,
                   help="crystals per work unit (and per file)")
    p.add_argument("--replicas", type=int, default=1, help="model replicas (Ray actors)")
    p.add_argument("--units-per-task", type=int, default=None,
                   help=f"work units a replica takes in one Ray task (default: about "
                   f"{TASKS_PER_REPLICA} tasks per replica; 1 = one task per unit)")
    p.add_argument("--cpus-per-replica", type=float, default=None,
                   help="CPUs reserved per replica (default: 1 with a GPU; on CPUs, all the "
                   "machine's CPUs but half of one, shared by the replicas)")
    p.add_argument("--gpus-per-replica", type=float, default=None,
                   help="default: 1 if the cluster has GPUs, else 0")
    p.add_argument("--threads-per-replica", type=int, default=None,
                   help="torch threads per replica (default: its CPUs, rounded up)")
    p.add_argument("--out", required=True,
                   help="output directory or URL, e.g. s3://bucket/prefix (created, or resumed)")
    p.add_argument("--seed", type=int, default=0, help="seed of every unit's generator")
    add_ray_arguments(p)
    p.add_argument("--funnel", action="store_true",
                   help="run the MatGL stability funnel as a pipeline stage")
    add_funnel_arguments(p)


def run(args) -> int:
    from crysray.data.csv import dataset_path
    from crysray.filter.config import funnel_config_from_args
    from crysray.sample.plan import plan_campaign, summary_lines, validate
    from crysray.storage import Storage
    from crysray.train.checkpoint import read_checkpoint

    # checked before anything is written; defaults (compositions, novelty set) come from the
    # dataset the checkpoint was trained on
    validate(args)
    check_location(args.out, "--out")
    args.checkpoint = resolve_model(args.checkpoint)
    store = Storage(args.out)  # a bad URL or a missing bucket fails here, before Ray
    payload = read_checkpoint(args.checkpoint)
    model_config = payload["config"]
    train_split = dataset_path(model_config["data"]["dataset"], "train") if args.funnel else None
    funnel = funnel_config_from_args(args, train_split) if args.funnel else None
    plan = plan_campaign(args, store, payload, funnel)
    summary = sample_with_ray(args, store, plan, funnel)
    print("\n".join(summary_lines(summary)))
    return 1 if summary["failed_units"] else 0


def sample_with_ray(args, store, plan, funnel) -> dict:
    """The Ray part: start (or join) Ray, run the pool with a progress line, then count."""
    import time

    from crysray.console import Progress, quiet_stderr
    from crysray.sample.campaign import finished_units, record_failures
    from crysray.sample.plan import rows_to_do, steady_rate, summarize

    args.log_file = log_file(store, "sample")
    start, arrivals = time.perf_counter(), []
    needs_ray = plan.todo or (funnel is not None and args.uniqueness == "distributed")
    if needs_ray:
        print(f"Ray's own output: {args.log_file}", file=sys.stderr)
    with quiet_stderr(args.log_file if needs_ray else None, args.verbose) as terminal:
        if plan.todo:
            # units already sampled (and only waiting for the funnel) count as done
            unsampled = sorted(set(plan.todo) - set(finished_units(store)))
            todo = rows_to_do(plan.spec, unsampled)
            progress = Progress("sampled", plan.spec.num_samples,
                                plan.spec.num_samples - todo, stream=terminal)  # fmt: skip
            arrivals = _run_pool(args, store, plan, funnel, progress)
            progress.close()
        elif needs_ray:
            _start(args)
        seconds = time.perf_counter() - start  # the pools' time, as crystals/s means it
        if funnel is not None:
            _finalize_funnel(args, store)
    summary = summarize(store, plan, seconds)
    summary["steady_crystals_per_second"] = steady_rate(arrivals)
    summary["failed_units"] = record_failures(store)
    return summary


def _start(args) -> None:
    from crysray.distributed import new_session, start_ray

    start_ray(args.address, verbose=args.verbose)
    args.session = new_session()


def _run_pool(args, store, plan, funnel, progress) -> list:
    """The pools; on Ctrl-C, Ray is stopped and the interrupted attempts are not counted."""
    import ray

    from crysray.distributed import sample_campaign
    from crysray.sample.campaign import forget_interrupted_attempts

    _start(args)
    done_before = progress.done

    def show(sampled: int, units: int) -> None:
        extra = f"{units}/{len(plan.todo)} units" + (" filtered" if funnel else "")
        progress.update_to(done_before + sampled, extra)

    try:
        return sample_campaign(store, plan, args, funnel, on_progress=show)
    except KeyboardInterrupt:
        ray.shutdown()  # ends this run's actors before their attempts are taken back
        forget_interrupted_attempts(store, args.session)
        raise


def _finalize_funnel(args, store) -> None:
    from crysray.filter.campaign import finalize_run

    decide = None
    if args.uniqueness == "distributed":
        from crysray.distributed import decide_run_distributed as decide
    print(json.dumps(finalize_run(store, decide)["funnel"]))
