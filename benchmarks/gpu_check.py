"""GPU check: what one GPU buys over this machine's CPUs, measured side by side in one run.

Prints one JSON line (and appends it to ``--record``): for each of

- Ray Train: optimiser steps/s of one Ray Train worker (``crysray.distributed.train_with_ray``,
  the MP CSP config, its batch of 128 MP cells),
- sampling: CSP crystals/s of ``CrystalSampler`` on the MP-20 pilot test compositions
  (N = 10), fp32 and bf16,
- relaxation: crystals/s of the funnel's batched MatGL relaxation (``relax_batch``) on
  perturbed MP-20 pilot test crystals,

the GPU figure next to the CPU figure and their ratio. Sizes are chosen so that the whole
check takes at most about 8 minutes on one GPU (the CPU side runs fewer items: its rates are
per item). ``--tiny`` runs everything at toy sizes (the test suite does, on CPU only, so the
script cannot rot); ``--devices cpu`` skips the GPU.

    python benchmarks/gpu_check.py                       # on a machine with one GPU
    python benchmarks/gpu_check.py --tiny --devices cpu  # seconds, anywhere
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from crysray.data.csv import dataset_path, load_split
from crysray.filter.potential import load_potential
from crysray.filter.relax import relax_batch
from crysray.sample.compositions import table_compositions
from crysray.sample.sampler import CrystalSampler

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmarks folder, when imported
from bench_relax import perturbed_test_crystals

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
CHECKPOINT = REPO / "checkpoints" / "crysbfn_mp20_csp.pt"

# (train steps, sampled crystals, relaxed crystals) per device; tiny: for the tests
SIZES = {
    "cuda": (200, 8192, 512),
    "cpu": (20, 512, 32),
    "tiny": (2, 8, 2),
}


def train_rate(device: str, steps: int, config_name: str, overrides: list[str],
               storage: Path) -> float:  # fmt: skip
    """Optimiser steps/s of one Ray Train worker (the time inside the training loop)."""
    import ray

    from crysray.distributed import start_ray, train_with_ray
    from crysray.methods.registry import load_config

    if not ray.is_initialized():
        start_ray(None, log_to_driver=False)
    config = load_config(config_name, [*overrides, f"train.max_steps={steps}",
                                       "train.log_every=1000000"])  # fmt: skip
    gpu = device == "cuda"
    result = train_with_ray(config, 1, gpu, 1, str(storage), f"check-{device}", max_failures=0)
    return steps / (result.metrics["minutes"] * 60)


def sample_rate(checkpoint: str, device: str, count: int, precision: str, batch: int) -> float:
    """CSP crystals/s at N = 10 on MP-20 pilot test compositions (cycled to ``count``)."""
    compositions = table_compositions(load_split(dataset_path("mp_20_pilot", "test")))
    targets = [compositions[i % len(compositions)] for i in range(count)]
    sampler = CrystalSampler(checkpoint, 10, batch_size=batch, device=device, precision=precision)
    sampler.sample_unit(0, 0, targets[:batch])  # warm-up: kernels, allocator
    _sync(device)
    start = time.perf_counter()
    sampler.sample_unit(1, 0, targets)
    _sync(device)
    return count / (time.perf_counter() - start)


def relax_rate(device: str, count: int) -> float:
    """Crystals/s of the batched MatGL relaxation (FIRE, the funnel's defaults)."""
    lattices, fracs, numbers = perturbed_test_crystals(count)  # +5 % volume, 0.05 A noise
    potential = load_potential(device=device)
    _sync(device)
    start = time.perf_counter()
    relax_batch(potential, lattices, fracs, numbers)
    _sync(device)
    return count / (time.perf_counter() - start)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure(device: str, sizes: tuple[int, int, int], args) -> dict:
    steps, samples, relaxed = sizes
    batch = min(args.batch_size, samples)
    with tempfile.TemporaryDirectory(prefix="crysray-gpu-check-") as storage:
        # tiny: a toy batch too, so that the check runs in seconds
        overrides = args.override + (["train.batch_size=4"] if args.tiny else [])
        rate = train_rate(device, steps, args.config, overrides, Path(storage))
    out = {"train_steps_per_second": rate}
    for precision in ("fp32", "bf16"):
        rate = sample_rate(args.checkpoint, device, samples, precision, batch)
        out[f"sample_{precision}_crystals_per_second"] = rate
    out["relax_crystals_per_second"] = relax_rate(device, relaxed)
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--devices", default="cuda,cpu", help="comma-separated: cuda, cpu")
    p.add_argument("--tiny", action="store_true", help="toy sizes (tests)")
    p.add_argument("--config", default="crysbfn_mp20_csp", help="training config to time")
    p.add_argument("--override", nargs="*", default=[], help="section.key=value for it")
    p.add_argument("--checkpoint", default=str(CHECKPOINT), help="CSP model to sample")
    p.add_argument("--batch-size", type=int, default=512, help="sampling batch")
    p.add_argument("--record", default=str(RESULTS / "gpu_check.jsonl"))
    args = p.parse_args(argv)
    devices = args.devices.split(",")
    if "cuda" in devices and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device here; use --devices cpu")
    start = time.perf_counter()
    record = {"benchmark": "gpu_check", "tiny": args.tiny, "config": args.config,
              "checkpoint": args.checkpoint,
              "overrides": args.override,
              "machine": platform.machine(), "cpus": torch.get_num_threads(),
              "gpu": torch.cuda.get_device_name(0) if "cuda" in devices else None}  # fmt: skip
    for device in devices:
        record[device] = measure(device, SIZES["tiny" if args.tiny else device], args)
    if "cuda" in devices and "cpu" in devices:
        record["gpu_over_cpu"] = {k: record["cuda"][k] / record["cpu"][k] for k in record["cpu"]}
    record["seconds"] = time.perf_counter() - start
    line = json.dumps(record)
    print(line)
    with open(args.record, "a") as f:
        f.write(line + "\n")
    return record


if __name__ == "__main__":
    main()
