"""CrysBFN vs KLDM on Perov-5 CSP: quality against network evaluations (NFE) and time.

Every run samples one candidate per test crystal (@1) and scores it with StructureMatcher:
match rate, RMSE over matches, the tight share (matched with RMSE < 0.05), NFE per crystal and
sampling throughput. The runs are listed as ``LABEL:CHECKPOINT:STEPS[:SAMPLER]`` and may be
split over processes (``--runs``); each appends a JSON line to ``--out``, and ``--table``
prints the comparison from that file, including how many times fewer network evaluations
CrysBFN needs to reach KLDM's best match rate.

    python benchmarks/bench_methods.py --subset 1000 --runs \\
        crysbfn:checkpoints/crysbfn_perov5.pt:10 kldm-pc:checkpoints/kldm_perov5.pt:1000:pc
    python benchmarks/bench_methods.py --table
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from crysray.eval.run_csp import evaluate_csp

RESULTS = REPO / "benchmarks" / "results" / "methods_perov5.jsonl"


def run(spec: str, subset: int | None, batch_size: int, workers: int) -> dict:
    label, checkpoint, steps, *sampler = spec.split(":")
    result = evaluate_csp(
        REPO / checkpoint if not Path(checkpoint).is_absolute() else checkpoint,
        steps=int(steps),
        batch_size=batch_size,
        subset=subset,
        workers=workers,
        sampler_options={"sampler": sampler[0]} if sampler else None,
    )
    return {
        "label": label,
        "machine": f"{platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} torch threads",
        **result,
        "checkpoint": checkpoint,  # relative to the repository
    }


def table(rows: list[dict]) -> str:
    head = ["run", "sampler", "steps", "NFE/crystal", "match @1", "RMSE", "RMSE < 0.05",
            "atoms < 0.5 A", "crystals/s", "crystals"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in sorted(rows, key=lambda r: (r["method"], r["sampler_options"]["sampler"],
                                         r["network_evaluations"])):  # fmt: skip
        lines.append(
            f"| {r['label']} | {r['sampler_options']['sampler']} | {r['steps']} | "
            f"{r['network_evaluations']} | {r['match_rate']:.2%} | {r['rmse']:.4f} | "
            f"{r['tight_0.05']:.2%} | {r['close_atoms_share']:.2%} | "
            f"{r['crystals_per_second']:.2f} | {r['n']} |"
        )
    return "\n".join(lines)


def nfe_ratio(rows: list[dict]) -> str:
    """KLDM's best match rate, and the fewest CrysBFN NFEs that reach it."""
    kldm = [r for r in rows if r["method"] == "kldm"]
    bfn = sorted(
        (r for r in rows if r["method"] == "crysbfn"), key=lambda r: r["network_evaluations"]
    )
    if not kldm or not bfn:
        return "both methods are needed for the NFE comparison"
    best = max(kldm, key=lambda r: r["match_rate"])
    reach = [r for r in bfn if r["match_rate"] >= best["match_rate"]]
    head = (
        f"KLDM's best match rate {best['match_rate']:.2%} ({best['label']}, "
        f"{best['network_evaluations']} NFE/crystal)"
    )
    if not reach:
        top = max(bfn, key=lambda r: r["match_rate"])
        return (
            f"{head}: no CrysBFN run reaches it (best {top['match_rate']:.2%} at "
            f"{top['network_evaluations']} NFE)"
        )
    first = reach[0]
    ratio = best["network_evaluations"] / first["network_evaluations"]
    return (
        f"{head}: CrysBFN reaches it with {first['network_evaluations']} NFE "
        f"({first['match_rate']:.2%}), {ratio:.0f}x fewer network evaluations"
    )


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--runs", nargs="*", default=[], metavar="LABEL:CHECKPOINT:STEPS[:SAMPLER]")
    p.add_argument("--subset", type=int, default=None, help="random test crystals (default all)")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--workers", type=int, default=1, help="processes for structure matching")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--table", action="store_true", help="print the table of --out")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    for spec in args.runs:
        result = run(spec, args.subset, args.batch_size, args.workers)
        print(json.dumps(result), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a") as f:
            f.write(json.dumps(result) + "\n")
    if args.table:
        rows = [json.loads(line) for line in args.out.read_text().splitlines() if line]
        print(table(rows))
        print(nfe_ratio(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
