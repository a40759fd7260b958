"""CSP quality and speed of a checkpoint on the full Perov-5 test split.

For each N: match rate and RMSE (@1), sampling throughput (crystals/s, sampling only and whole
process), and the network's achieved GFLOP/s next to a dense float32 matmul of similar size
measured in the same run.

    python benchmarks/bench_csp.py --checkpoint checkpoints/crysbfn_perov5.pt --steps 10 50 200

Quality columns: match rate and RMSE over matches (@1), the share of test crystals matched
with RMSE < 0.05 and < 0.1, the RMSE over all crystals with an unmatched crystal counted at the
matcher's tolerance stol = 0.5, and the share of generated structures with two atoms closer
than 0.5 A. ``--compare old=PATH`` measures another checkpoint in the same run.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from crysray.data.csv import dataset_path, load_split
from crysray.eval.run_csp import evaluate_csp
from crysray.sample.compositions import table_compositions
from crysray.sample.sampler import composition_batch
from crysray.train.checkpoint import load_model


def network_gflops(checkpoint: str, batch_size: int, precision: str, repeats: int = 5) -> dict:
    """Achieved GFLOP/s of one denoiser forward on a test batch vs a matmul of similar size."""
    model = load_model(checkpoint)
    table = load_split(dataset_path("perov_5", "test")).subset(range(batch_size))
    spec = composition_batch(table_compositions(table))
    n = int(spec.num_atoms.sum())
    inputs = (
        spec.atom_types,
        torch.rand(n, 3) * 6.28 - 3.14,
        torch.rand(n, 3),
        torch.rand(batch_size),
        torch.randn(batch_size, 3, 3),
        spec.num_atoms,
    )
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        with FlopCounterMode(display=False) as counter:
            model.denoiser(*inputs)
        flops = counter.get_total_flops()
        seconds = _best_time(lambda: model.denoiser(*inputs), repeats)
    hidden = model.config.net.hidden_dim
    edges = int((spec.num_atoms**2).sum())
    a, b = torch.randn(edges, hidden, dtype=dtype), torch.randn(hidden, hidden, dtype=dtype)
    mm_seconds = _best_time(lambda: a @ b, repeats * 4)
    net, mm = flops / seconds / 1e9, 2 * edges * hidden * hidden / mm_seconds / 1e9
    return {
        "precision": precision,
        "network_gflop_per_forward": flops / 1e9,
        "network_gflops": net,
        "matmul_shape": [edges, hidden, hidden],
        "matmul_gflops": mm,
        "network_over_matmul": net / mm,
    }


def _best_time(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


COLUMNS = [
    ("match_rate", "match rate @1", "{:.2%}"),
    ("rmse", "RMSE (matches)", "{:.4f}"),
    ("tight_0.05", "RMSE < 0.05", "{:.2%}"),
    ("tight_0.1", "RMSE < 0.1", "{:.2%}"),
    ("rmse_all", "RMSE all (unmatched = 0.5)", "{:.4f}"),
    ("close_atoms_share", "atoms < 0.5 A", "{:.2%}"),
    ("crystals_per_second", "sampling crystals/s", "{:.1f}"),
]


def table(runs: list[dict]) -> str:
    """Markdown table, one row per (checkpoint, N, precision)."""
    head = ["model", "N", "precision"] + [c[1] for c in COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in runs:
        cells = [r["label"], str(r["steps"]), r["precision"]] + [
            f.format(r[k]) for k, _, f in COLUMNS
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--checkpoint", default=str(REPO / "checkpoints" / "crysbfn_perov5.pt"))
    p.add_argument(
        "--compare",
        nargs="*",
        default=[],
        metavar="LABEL=PATH",
        help="other checkpoints measured in the same run at --compare-steps",
    )
    p.add_argument("--compare-steps", type=int, nargs="+", default=[10])
    p.add_argument("--steps", type=int, nargs="+", default=[10, 50, 200])
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument(
        "--bf16-steps",
        type=int,
        nargs="*",
        default=None,
        help="run bf16 only at these N (default: at every N)",
    )
    p.add_argument("--workers", type=int, default=2, help="processes for structure matching")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    p.add_argument(
        "--limit", type=int, default=None, help="first LIMIT test crystals (default: all)"
    )
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "csp_perov5.json")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    # compared checkpoints first, right before the new one at the same N, so that the
    # throughputs are measured close together on a shared machine
    models = [(*item.split("=", 1), args.compare_steps) for item in args.compare] + [
        ("new", args.checkpoint, args.steps)
    ]
    record = {
        "machine": f"{platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} torch threads",
        "torch": torch.__version__,
        "checkpoint": args.checkpoint,
        "runs": [],
        "stol_for_unmatched": 0.5,
        "network": [network_gflops(args.checkpoint, args.batch_size, p) for p in args.precisions],
    }
    print(json.dumps(record["network"]), flush=True)
    for label, checkpoint, steps_list in models:
        for steps in steps_list:
            for precision in args.precisions:
                if (
                    precision == "bf16"
                    and args.bf16_steps is not None
                    and steps not in args.bf16_steps
                ):
                    continue
                start = time.perf_counter()
                result = evaluate_csp(
                    checkpoint,
                    steps=steps,
                    batch_size=args.batch_size,
                    limit=args.limit,
                    precision=precision,
                    workers=args.workers,
                )
                # sampling + matching + loading: what a user waits for per evaluated crystal
                result["whole_run_crystals_per_second"] = result["n"] / (
                    time.perf_counter() - start
                )
                result["label"] = label
                record["runs"].append(result)
                print(json.dumps(result), flush=True)
    record["table"] = table(record["runs"])
    print(record["table"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
