"""De novo generation: the DNG table of shipped models, and DNG vs CSP sampling throughput.

``--runs LABEL:CHECKPOINT[:STEPS[:SAMPLER]]`` samples each DNG checkpoint (``--num-samples``,
atom counts from its training histogram) and scores it with crysray.eval.run_dng: validity,
coverage, Wasserstein distances, uniqueness, novelty and, with ``--sun-samples``, the S.U.N.
rate through the stability funnel. Each run appends a JSON line to ``--out``.

``--throughput LABEL:CSP_CHECKPOINT:DNG_CHECKPOINT:STEPS[:SAMPLER]`` times the same method in
both tasks in one process, alternating CSP and DNG batches ``--repeats`` times so that the
machine's drift hits both alike: CSP on the first Perov-5 test compositions, DNG on atom
counts from the DNG checkpoint. Appends to ``--throughput-out``.

    python benchmarks/bench_dng.py --num-samples 10000 --workers 2 \\
        --runs crysbfn:checkpoints/crysbfn_perov5_dng.pt
    python benchmarks/bench_dng.py --throughput \\
        crysbfn:checkpoints/crysbfn_perov5.pt:checkpoints/crysbfn_perov5_dng.pt:10
    python benchmarks/bench_dng.py --table
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from crysray.data.csv import dataset_path, load_split
from crysray.eval.run_dng import evaluate_dng
from crysray.sample.compositions import table_compositions
from crysray.sample.sampler import CrystalSampler
from crysray.sample.targets import AtomCountTargets
from crysray.train.checkpoint import checkpoint_hash

RESULTS = REPO / "benchmarks" / "results" / "dng.jsonl"
THROUGHPUT = REPO / "benchmarks" / "results" / "dng_throughput.jsonl"


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"


def _path(checkpoint: str) -> Path:
    return Path(checkpoint) if Path(checkpoint).is_absolute() else REPO / checkpoint


def run(spec: str, args) -> dict:
    label, checkpoint, *rest = spec.split(":")
    steps = int(rest[0]) if rest else None
    result = evaluate_dng(
        _path(checkpoint),
        args.num_samples,
        steps,
        args.batch_size,
        args.seed,
        args.workers,
        {"sampler": rest[1]} if len(rest) > 1 else None,
        sun_samples=args.sun_samples,
    )
    return {"label": label, "machine": machine(), **result, "checkpoint": checkpoint}


def throughput(spec: str, crystals: int, repeats: int, batch_size: int) -> dict:
    """Crystals per second of one method in CSP and in DNG, measured alternately."""
    label, csp_checkpoint, dng_checkpoint, steps, *sampler = spec.split(":")
    options = {"sampler": sampler[0]} if sampler else None
    samplers = {
        task: CrystalSampler(str(_path(ckpt)), int(steps), batch_size, sampler_options=options)
        for task, ckpt in (("csp", csp_checkpoint), ("dng", dng_checkpoint))
    }
    dataset = samplers["csp"].model.config.data.dataset
    compositions = table_compositions(load_split(dataset_path(dataset, "test")))[:crystals]
    counts = AtomCountTargets(samplers["dng"].model.config.data.num_atoms_counts)
    targets = {"csp": compositions, "dng": counts.for_unit(0, len(compositions), 0, 0)}
    for task, sampler in samplers.items():  # warm-up: first-call allocations, schedules
        sampler.sample_unit(0, 1, targets[task][:8])
    seconds = {"csp": 0.0, "dng": 0.0}
    for repeat in range(repeats):
        for task, sampler in samplers.items():
            start = time.perf_counter()
            sampler.sample_unit(repeat, 0, targets[task])
            seconds[task] += time.perf_counter() - start
    rate = {task: repeats * len(compositions) / s for task, s in seconds.items()}
    return {
        "label": label,
        "machine": machine(),
        "steps": int(steps),
        "sampler_options": samplers["dng"].sampler_options,
        "network_evaluations": samplers["dng"].network_evaluations,
        "crystals": len(compositions),
        "repeats": repeats,
        "atoms_per_crystal": {
            "csp": sum(len(c.atomic_numbers) for c in targets["csp"]) / len(compositions),
            "dng": sum(c.num_atoms for c in targets["dng"]) / len(compositions),
        },
        "csp_crystals_per_second": rate["csp"],
        "dng_crystals_per_second": rate["dng"],
        "dng_over_csp": rate["dng"] / rate["csp"],
        "csp_checkpoint": csp_checkpoint,
        "dng_checkpoint": dng_checkpoint,
    }


def dng_table(rows: list[dict]) -> str:
    head = ["model", "dataset", "sampler", "steps", "samples", "struct valid", "comp valid",
            "COV-R", "COV-P", "d density", "d #elem", "unique", "novel", "S.U.N. (of N)",
            "crystals/s"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        sun = f"{r['sun_rate']:.2%} ({r['sun_samples']})" if "sun_rate" in r else "-"
        lines.append(
            f"| {_model_label(r)} | {r['dataset']} | {r['sampler_options']['sampler']} | "
            f"{r['steps']} | {r['n']} | {r['structure_validity']:.2%} | "
            f"{r['composition_validity']:.2%} | {r['cov_recall']:.2%} | "
            f"{r['cov_precision']:.2%} | {r['wdist_density']:.4f} | "
            f"{r['wdist_num_elements']:.4f} | {r['uniqueness']:.2%} | {r['novelty']:.2%} | "
            f"{sun} | {r['crystals_per_second']:.1f} |"
        )
    return "\n".join(lines)


def _model_label(record: dict) -> str:
    """The record's label, in bold when its checkpoint is the file shipped now, marked as an
    earlier checkpoint when the file has changed since (the hash tells)."""
    if _current_hash(record["checkpoint"]) == record["checkpoint_hash"]:
        return f"**{record['label']}**"
    return f"{record['label']} (earlier checkpoint {record['checkpoint_hash'][:8]})"


@functools.cache
def _current_hash(checkpoint: str) -> str | None:
    """Hash of the checkpoint file as it is now (read once per file, however many rows)."""
    path = _path(checkpoint)
    return checkpoint_hash(path) if path.is_file() else None


def throughput_table(rows: list[dict]) -> str:
    head = ["method", "sampler", "steps", "NFE", "atoms/crystal CSP / DNG", "CSP crystals/s",
            "DNG crystals/s", "DNG / CSP"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        atoms = r["atoms_per_crystal"]
        lines.append(
            f"| {r['label']} | {r['sampler_options']['sampler']} | {r['steps']} | "
            f"{r['network_evaluations']} | {atoms['csp']:.2f} / {atoms['dng']:.2f} | "
            f"{r['csp_crystals_per_second']:.1f} | {r['dng_crystals_per_second']:.1f} | "
            f"{r['dng_over_csp']:.2f}x |"
        )
    return "\n".join(lines)


def _append(path: Path, record: dict) -> None:
    print(json.dumps(record), flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--runs", nargs="*", default=[], metavar="LABEL:CHECKPOINT[:STEPS[:SAMPLER]]")
    p.add_argument("--num-samples", type=int, default=10_000)
    p.add_argument("--sun-samples", type=int, default=0, help="of the samples, through the funnel")
    p.add_argument("--throughput", nargs="*", default=[], metavar="LABEL:CSP:DNG:STEPS[:SAMPLER]")
    p.add_argument("--crystals", type=int, default=512, help="per throughput repeat and task")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1, help="processes for fingerprints")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--throughput-out", type=Path, default=THROUGHPUT)
    p.add_argument("--table", action="store_true", help="print the tables of both files")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    for spec in args.runs:
        _append(args.out, run(spec, args))
    for spec in args.throughput:
        _append(args.throughput_out, throughput(spec, args.crystals, args.repeats, args.batch_size))
    if args.table:
        for path, make in ((args.out, dng_table), (args.throughput_out, throughput_table)):
            if path.is_file():
                print(make(_read(path)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
