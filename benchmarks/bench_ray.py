"""Ray at scale on one machine: overhead, replica scaling, memory, driver cost, training scaling.

All comparisons run side by side in this one invocation (the machine is noisy):

1. overhead  - one single-threaded replica through the Ray pipeline vs the same sampler
               (CampaignWorker, same N, batch, threads, unit files) in a plain loop;
2. scaling   - two single-threaded replicas vs one;
3. memory    - peak RSS of the whole process tree at 10x the samples;
4. driver    - the driver's CPU per work unit (what bounds a 64-GPU cluster): in the sampling
               runs, and at thousands of units with one Ray task per unit vs the default
               grouping of units into tasks;
5. training  - two single-threaded Ray Train workers vs one (crystals/s, same per-worker batch);
6. storage   - the same campaign written to local disk and to an S3-compatible server on
               127.0.0.1 (moto, in this process), runs alternated; plus the write of one unit
               file alone to each, to show what a unit costs on object storage.

    python benchmarks/bench_ray.py
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
PY = sys.executable
CHECKPOINT = REPO / "checkpoints" / "crysbfn_perov5.pt"


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def run_measured(cmd: list[str]) -> dict:
    """Run a command; wall time, peak RSS of its process tree, the driver's own CPU time and
    peak RSS."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    ps = psutil.Process(proc.pid)
    peak, cpu, driver_peak = 0, 0.0, 0
    done = threading.Event()

    def watch():
        nonlocal peak, cpu, driver_peak
        while not done.is_set():
            try:
                peak = max(peak, tree_rss(ps))
                driver_peak = max(driver_peak, ps.memory_info().rss)
                cpu = sum(ps.cpu_times()[:2])
            except psutil.Error:
                pass
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    out, err = proc.communicate()
    done.set()
    watcher.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{err[-3000:]}")
    return {
        "wall_seconds": time.perf_counter() - start,
        "peak_rss_mb": peak / 2**20,
        "driver_cpu_seconds": cpu,
        "driver_peak_rss_mb": driver_peak / 2**20,
        "stdout": out,
    }


def mass_sample(
    out: Path, samples: int, replicas: int, steps: int, unit: int, batch: int, *extra: str
) -> dict:
    cmd = [
        PY,
        "jobs/mass_sample.py",
        "--checkpoint",
        str(CHECKPOINT),
        "--num-samples",
        str(samples),
        "--steps",
        str(steps),
        "--unit-size",
        str(unit),
        "--batch-size",
        str(batch),
        "--replicas",
        str(replicas),
        "--threads-per-replica",
        "1",
        "--out",
        str(out),
        *extra,
    ]
    result = run_measured(cmd)
    line = next(x for x in result["stdout"].splitlines() if x.startswith("generated now"))
    result["pipeline_seconds"] = float(line.split(" in ")[1].split(" s ")[0])
    result["crystals_per_second"] = samples / result["pipeline_seconds"]
    result["steady_crystals_per_second"] = float(line.split(", ")[-1].split(" after")[0])
    result.pop("stdout")
    return result


PLAIN_LOOP = """
import sys, time, torch
sys.path.insert(0, {repo!r})
torch.set_num_threads(1)
from crysray.data.csv import dataset_path
from crysray.sample.campaign import CampaignSpec, CampaignWorker, open_run
from crysray.sample.compositions import read_compositions
from crysray.sample.targets import CompositionTargets
from crysray.train.checkpoint import checkpoint_hash
comps = CompositionTargets(read_compositions(dataset_path("perov_5", "test")))
spec = CampaignSpec("csp", checkpoint_hash({ckpt!r}), comps.digest(), {n}, {steps}, 0,
                    {unit}, {batch})
todo = open_run({out!r}, spec)
worker = CampaignWorker({ckpt!r}, {out!r}, spec.__dict__, comps, threads=1)
start = time.perf_counter()
ends = []
for u in todo:
    worker.run_unit(u)
    ends.append(time.perf_counter())
steady = sum(spec.unit_range(u)[1] - spec.unit_range(u)[0] for u in todo[1:]) / (ends[-1] - ends[0])
print("seconds", ends[-1] - start, "steady", steady)
"""


def plain_loop(out: Path, samples: int, steps: int, unit: int, batch: int) -> dict:
    code = PLAIN_LOOP.format(
        repo=str(REPO),
        ckpt=str(CHECKPOINT),
        n=samples,
        steps=steps,
        unit=unit,
        batch=batch,
        out=str(out),
    )
    result = run_measured([PY, "-c", code])
    fields = result.pop("stdout").split()
    seconds, steady = (
        float(fields[fields.index("seconds") + 1]),
        float(fields[fields.index("steady") + 1]),
    )
    return {
        **result,
        "pipeline_seconds": seconds,
        "crystals_per_second": samples / seconds,
        "steady_crystals_per_second": steady,
    }


def driver_cost(tmp: Path, unit_counts: list[int]) -> dict:
    """The driver's CPU seconds per work unit, one Ray task per unit vs the default grouping.

    Units of one crystal at N = 1 make the replicas' work negligible, so the driver is what is
    measured; the cost per unit is the difference between a small and a large run divided by
    the extra units, which removes the driver's start-up.
    """
    out = {}
    for label, extra in (("one_task_per_unit", ["--units-per-task", "1"]), ("default", [])):
        runs = [
            mass_sample(tmp / f"driver-{label}-{n}", n, 2, 1, 1, 1, *extra) for n in unit_counts
        ]
        extra_units = unit_counts[1] - unit_counts[0]
        out[label] = {
            "runs": {str(n): r for n, r in zip(unit_counts, runs)},
            "driver_cpu_ms_per_unit": 1000
            * (runs[1]["driver_cpu_seconds"] - runs[0]["driver_cpu_seconds"])
            / extra_units,
            "driver_peak_rss_mb": [r["driver_peak_rss_mb"] for r in runs],
        }
    out["ratio"] = (
        out["one_task_per_unit"]["driver_cpu_ms_per_unit"]
        / out["default"]["driver_cpu_ms_per_unit"]
    )
    return out


def storage_throughput(tmp: Path, samples: int, repeats: int, common: tuple, writes: int) -> dict:
    """Local disk vs object storage, same campaign, runs alternated so drift hits both."""
    import os
    import statistics

    import pyarrow.parquet as pq

    from crysray.storage import Storage

    sys.path.insert(0, str(REPO / "tests"))  # the tests' S3 server
    from s3_server import S3Server

    with S3Server() as server:
        os.environ.update(server.environment())  # the job subprocesses reach this server only
        bucket = server.new_bucket()
        runs: dict[str, list[dict]] = {"local": [], "s3": []}
        for r in range(repeats):
            order = ("local", "s3") if r % 2 == 0 else ("s3", "local")
            for where in order:
                out = tmp / f"storage-{r}" if where == "local" else bucket.url(f"storage-{r}")
                runs[where].append(mass_sample(out, samples, 1, *common))
        unit = pq.read_table(next((tmp / "storage-0" / "data").glob("*.parquet")))
        write_ms = {}
        for where, store in (
            ("local", Storage(tmp / "writes")),
            ("s3", Storage(bucket.url("writes"))),
        ):
            times = []
            for i in range(writes):
                start = time.perf_counter()
                store.write_table(f"data/unit-{i:08d}.parquet", unit)
                times.append(time.perf_counter() - start)
            write_ms[where] = 1000 * statistics.median(times)

    def median(where: str, key: str) -> float:
        return statistics.median(run[key] for run in runs[where])

    return {
        "runs": runs,
        "samples": samples,
        "unit_rows": unit.num_rows,
        "unit_bytes": unit.nbytes,
        "s3_over_local": median("s3", "crystals_per_second")
        / median("local", "crystals_per_second"),
        "steady_s3_over_local": median("s3", "steady_crystals_per_second")
        / median("local", "steady_crystals_per_second"),
        "unit_write_ms": write_ms,
    }


def train_throughput(workers: int, per_worker_batch: int, steps: int, tmp: Path) -> dict:
    cmd = [
        PY,
        "jobs/train.py",
        "--workers",
        str(workers),
        "--threads-per-worker",
        "1",
        "--storage",
        str(tmp / f"train{workers}"),
        "--name",
        "bench",
        f"train.max_steps={steps}",
        f"train.batch_size={per_worker_batch * workers}",
        "train.log_every=1000000",
    ]
    result = run_measured(cmd)
    metrics = next(x for x in result.pop("stdout").splitlines() if x.startswith("final metrics:"))
    minutes = float(metrics.split("'minutes': ")[1].split(",")[0])
    return {
        **result,
        "train_minutes": minutes,
        "crystals_per_second": steps * per_worker_batch * workers / (minutes * 60),
    }


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--samples", type=int, default=6144)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--unit-size", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--memory-samples", type=int, nargs=2, default=[10_000, 100_000])
    p.add_argument(
        "--memory-steps", type=int, default=1, help="N for the memory runs (cost, not quality)"
    )
    p.add_argument("--train-steps", type=int, default=60)
    p.add_argument(
        "--driver-units", type=int, nargs=2, default=[300, 3000], help="units of the driver runs"
    )
    p.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=["sampling", "memory", "driver", "training", "storage"],
    )
    p.add_argument("--storage-samples", type=int, default=3072)
    p.add_argument("--storage-repeats", type=int, default=4, help="runs on each storage")
    p.add_argument("--unit-writes", type=int, default=50, help="single unit writes timed")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "ray.json")
    args = p.parse_args()
    record = {
        "machine": f"{platform.machine()}, {psutil.cpu_count()} CPUs, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB"
    }
    tmp = Path(tempfile.mkdtemp(prefix="crysray-bench-"))
    common = (args.steps, args.unit_size, args.batch_size)
    if "sampling" not in args.skip:
        plain = plain_loop(tmp / "plain", args.samples, *common)
        one = mass_sample(tmp / "one", args.samples, 1, *common)
        two = mass_sample(tmp / "two", args.samples, 2, *common)
        units = -(-args.samples // args.unit_size)
        record["sampling"] = {
            "plain_loop": plain,
            "ray_1_replica": one,
            "ray_2_replicas": two,
            # steady state: after each pipeline's first unit (actor/process start-up excluded)
            "ray_over_plain": one["steady_crystals_per_second"]
            / plain["steady_crystals_per_second"],
            "two_over_one": two["steady_crystals_per_second"] / one["steady_crystals_per_second"],
            "end_to_end_ray_over_plain": one["crystals_per_second"] / plain["crystals_per_second"],
            "end_to_end_two_over_one": two["crystals_per_second"] / one["crystals_per_second"],
            "driver_cpu_seconds_per_unit": two["driver_cpu_seconds"] / units,
        }
        print(json.dumps(record["sampling"], indent=1), flush=True)
    if "memory" not in args.skip:
        small, large = (
            mass_sample(tmp / f"mem{n}", n, 2, args.memory_steps, 1024, 512)
            for n in args.memory_samples
        )
        record["memory"] = {
            "small": small,
            "large": large,
            "large_over_small": large["peak_rss_mb"] / small["peak_rss_mb"],
        }
        print(json.dumps(record["memory"], indent=1), flush=True)
    if "driver" not in args.skip:
        record["driver"] = driver_cost(tmp, args.driver_units)
        print(json.dumps(record["driver"], indent=1), flush=True)
    if "training" not in args.skip:
        t1 = train_throughput(1, 128, args.train_steps, tmp)
        t2 = train_throughput(2, 128, args.train_steps, tmp)
        record["training"] = {
            "one_worker": t1,
            "two_workers": t2,
            "two_over_one": t2["crystals_per_second"] / t1["crystals_per_second"],
        }
        print(json.dumps(record["training"], indent=1), flush=True)
    if "storage" not in args.skip:
        record["storage"] = storage_throughput(
            tmp, args.storage_samples, args.storage_repeats, common, args.unit_writes
        )
        print(json.dumps(record["storage"], indent=1), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
