"""``crysray train`` (``crysray-train``): train on one machine, no Ray; ``crysray ray-train``
(``jobs/train.py``): DDP training with Ray Train (gloo on CPU, NCCL on GPU), resumable.

Both take a packaged config by name (or a YAML file) and ``section.key=value`` overrides.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from crysray.command.common import add_ray_arguments, check_location

CONFIG_HELP = "packaged config name (see the list in an error for an unknown one) or YAML path"


def add_local_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="crysbfn_perov5", help=CONFIG_HELP)
    p.add_argument("--run-dir", type=Path, required=True,
                   help="checkpoint.pt and snapshots go here; resumes if present")
    p.add_argument("--export", type=Path, default=None,
                   help="write the EMA weights + config (what sampling needs) here at the end "
                   "(default: no export)")
    p.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.max_minutes=120")


def run_local(args) -> int:
    import logging

    from crysray.train.local import run_local_training

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    config = _load_config(args.config, args.overrides)
    result = run_local_training(config, args.run_dir)
    if args.export:
        export_with_domain(args.run_dir / "checkpoint.pt", args.export)
    print(result)
    return 0


def add_ray_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="crysbfn_perov5", help=CONFIG_HELP)
    p.add_argument("--workers", type=int, default=2,
                   help="Ray Train workers (one per GPU with --gpu)")
    p.add_argument("--gpu", action="store_true", help="one GPU per worker (NCCL)")
    p.add_argument("--threads-per-worker", type=int, default=1,
                   help="torch threads per CPU worker")
    p.add_argument("--storage", default="runs/ray",
                   help="Ray Train storage_path, shared by every node on a cluster (NFS or "
                   "s3://...); a relative path is taken from the current directory")
    p.add_argument("--name", default="crysray", help="run name: same name + storage resumes")
    p.add_argument("--max-failures", type=int, default=3, help="worker crashes to recover from")
    p.add_argument("--export", type=Path, default=None,
                   help="write the final EMA inference checkpoint here (default: no export)")
    add_ray_arguments(p)
    p.add_argument("overrides", nargs="*", help="section.key=value config overrides")


def export_with_domain(src: Path, dst: Path) -> None:
    """The inference checkpoint, with the training domain of the dataset it was trained on."""
    from crysray.data.domain import dataset_domain
    from crysray.train.checkpoint import export_inference, read_checkpoint

    dataset = read_checkpoint(src)["config"]["data"]["dataset"]
    export_inference(src, dst, dataset_domain(dataset).to_dict())


def run_ray(args) -> int:
    from crysray.console import quiet_stderr

    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    check_location(args.storage, "--storage")
    config = _load_config(args.config, args.overrides)
    if not args.gpu:
        config = config.replace("train", threads=args.threads_per_worker)
    storage = args.storage if "://" in args.storage else str(Path(args.storage).resolve())
    # Ray Train reports each epoch's metrics in the terminal: its output stays visible
    with quiet_stderr(None, verbose=True):
        from crysray.distributed import start_ray, train_with_ray

        start_ray(args.address, log_to_driver=True)
        result = train_with_ray(config, args.workers, args.gpu, args.threads_per_worker,
                                storage, args.name, args.max_failures)  # fmt: skip
    if args.export and result.checkpoint is not None:
        with result.checkpoint.as_directory() as d:
            export_with_domain(Path(d) / "checkpoint.pt", args.export)
    print(f"final metrics: {result.metrics}")
    print(f"checkpoint: {result.checkpoint.path if result.checkpoint else None}")
    return 0


def _load_config(name: str, overrides: list[str]):
    """``load_config``, naming the packaged configs when ``name`` is none of them."""
    from importlib import resources

    from crysray.methods.registry import load_config

    try:
        return load_config(name, overrides)
    except FileNotFoundError as err:
        folder = resources.files("crysray") / "configs"
        names = sorted(f.name[: -len(".yaml")] for f in folder.iterdir()
                       if f.name.endswith(".yaml"))  # fmt: skip
        raise FileNotFoundError(f"{err} (packaged configs: {', '.join(names)})") from None
