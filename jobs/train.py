"""Train a crysray model with Ray Train (DDP: gloo on CPU, NCCL on GPU).

Local (embedded Ray):

    python jobs/train.py --config crysbfn_perov5 --workers 2 --storage runs/ray --name perov5 \\
        train.max_minutes=60

Cluster (storage must be shared: NFS or s3://...):

    RAY_AUTH_MODE=token ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python jobs/train.py --workers 8 --gpu --storage s3://bucket/crysray --name perov5

Running the same command again with the same --storage and --name resumes from the latest
checkpoint; a crashed worker restarts from it too (FailureConfig). The final EMA weights are
exported to --export as an inference checkpoint for jobs/mass_sample.py.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def train_loop_per_worker(loop_config: dict) -> None:
    """Runs on every Ray Train worker: shard the data, wrap in DDP, report checkpoints."""
    import ray.train
    import ray.train.torch

    from crysray.cli import load_dataset_splits, prepare_config
    from crysray.methods.registry import config_from_dict
    from crysray.train.loop import train

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    config = config_from_dict(loop_config["config"])
    train_table, val_table = load_dataset_splits(config)
    config = prepare_config(config, train_table)
    batch = config.train.batch_size // world  # the global batch stays the configured one
    steps_per_epoch = len(
        train_table.batch_indices(batch, shuffle=False, rank=rank, world_size=world, drop_last=True)
    )
    config = config.replace(
        "train", checkpoint_every=max(1, steps_per_epoch)
    )  # one report per epoch

    workdir = Path(tempfile.mkdtemp(prefix=f"crysray-rank{rank}-"))
    restored = ray.train.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as d:
            (workdir / "checkpoint.pt").write_bytes((Path(d) / "checkpoint.pt").read_bytes())

    def epoch_batches(epoch: int):
        return train_table.iterate_batches(
            batch,
            shuffle=True,
            seed=config.train.seed,
            epoch=epoch,
            rank=rank,
            world_size=world,
            drop_last=True,
        )

    def report(path: Path, record: dict) -> None:
        checkpoint = ray.train.Checkpoint.from_directory(str(path.parent)) if rank == 0 else None
        ray.train.report({k: v for k, v in record.items() if v is not None}, checkpoint=checkpoint)

    train(
        config,
        epoch_batches,
        workdir / "checkpoint.pt",
        val_batches=(lambda: val_table.iterate_batches(512, shuffle=False)) if rank == 0 else None,
        wrap_model=ray.train.torch.prepare_model,
        on_checkpoint=report,
        is_main=rank == 0,
        rank=rank,
        device=ray.train.torch.get_device(),
    )


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", default="crysbfn_perov5", help="packaged config name or YAML path")
    p.add_argument(
        "--workers", type=int, default=2, help="Ray Train workers (one per GPU with --gpu)"
    )
    p.add_argument("--gpu", action="store_true", help="one GPU per worker (NCCL)")
    p.add_argument("--threads-per-worker", type=int, default=1, help="torch threads per CPU worker")
    p.add_argument("--storage", default=str(REPO / "runs" / "ray"), help="Ray Train storage_path")
    p.add_argument("--name", default="crysray", help="run name: same name + storage resumes")
    p.add_argument("--max-failures", type=int, default=3, help="worker crashes to recover from")
    p.add_argument(
        "--export", type=Path, default=None, help="write the final EMA inference checkpoint here"
    )
    p.add_argument("overrides", nargs="*", help="section.key=value config overrides")
    return p.parse_args(argv)


def run(args):
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from crysray.methods.registry import load_config
    from crysray.train.checkpoint import export_inference

    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    config = load_config(args.config, args.overrides)
    if not args.gpu:
        config = config.replace("train", threads=args.threads_per_worker)
    storage = args.storage if "://" in args.storage else str(Path(args.storage).resolve())
    ray.init(
        address=os.environ.get("RAY_ADDRESS"),
        log_to_driver=True,
        runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}},
    )
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": config.to_dict()},
        scaling_config=ray.train.ScalingConfig(
            num_workers=args.workers,
            use_gpu=args.gpu,
            resources_per_worker=None if args.gpu else {"CPU": args.threads_per_worker},
        ),
        run_config=ray.train.RunConfig(
            name=args.name,
            storage_path=storage,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            failure_config=ray.train.FailureConfig(max_failures=args.max_failures),
        ),
    )
    result = trainer.fit()
    if args.export and result.checkpoint is not None:
        with result.checkpoint.as_directory() as d:
            export_inference(Path(d) / "checkpoint.pt", args.export)
    return result


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        result = run(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"train: error: {err}", file=sys.stderr)
        return 2
    print(f"final metrics: {result.metrics}")
    print(f"checkpoint: {result.checkpoint.path if result.checkpoint else None}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
