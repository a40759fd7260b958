"""CSP quality and speed of a checkpoint on the full Perov-5 test split.

For each N: match rate and RMSE (@1), sampling throughput (crystals/s, sampling only and whole
process), and the network's achieved GFLOP/s next to a dense float32 matmul of similar size
measured in the same run.

    python benchmarks/bench_csp.py --checkpoint checkpoints/crysbfn_perov5.pt --steps 10 50 200
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from crysray.eval.run_csp import evaluate_csp  # noqa: E402
from crysray.sample.sampler import composition_batch  # noqa: E402
from crysray.sample.compositions import table_compositions  # noqa: E402
from crysray.data.csv import dataset_path, load_split  # noqa: E402
from crysray.train.checkpoint import load_model  # noqa: E402


def network_gflops(checkpoint: str, batch_size: int, precision: str, repeats: int = 5) -> dict:
    """Achieved GFLOP/s of one denoiser forward on a test batch vs a matmul of similar size."""
    model = load_model(checkpoint)
    table = load_split(dataset_path("perov_5", "test")).subset(range(batch_size))
    spec = composition_batch(table_compositions(table))
    n = int(spec.num_atoms.sum())
    inputs = (spec.atom_types, torch.rand(n, 3) * 6.28 - 3.14, torch.rand(n, 3), torch.rand(batch_size),
              torch.randn(batch_size, 3, 3), spec.num_atoms)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        with FlopCounterMode(display=False) as counter:
            model.denoiser(*inputs)
        flops = counter.get_total_flops()
        seconds = _best_time(lambda: model.denoiser(*inputs), repeats)
    hidden = model.config.net.hidden_dim
    edges = int((spec.num_atoms ** 2).sum())
    a, b = torch.randn(edges, hidden, dtype=dtype), torch.randn(hidden, hidden, dtype=dtype)
    mm_seconds = _best_time(lambda: a @ b, repeats * 4)
    net, mm = flops / seconds / 1e9, 2 * edges * hidden * hidden / mm_seconds / 1e9
    return {"precision": precision, "network_gflop_per_forward": flops / 1e9, "network_gflops": net,
            "matmul_shape": [edges, hidden, hidden], "matmul_gflops": mm, "network_over_matmul": net / mm}


def _best_time(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=str(REPO / "checkpoints" / "crysbfn_perov5.pt"))
    p.add_argument("--steps", type=int, nargs="+", default=[10, 50, 200])
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--limit", type=int, default=None, help="first LIMIT test crystals (default: all)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "csp_perov5.json")
    args = p.parse_args()
    record = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
              "torch": torch.__version__, "checkpoint": args.checkpoint, "runs": [],
              "network": [network_gflops(args.checkpoint, args.batch_size, p) for p in args.precisions]}
    print(json.dumps(record["network"]), flush=True)
    for steps in args.steps:
        for precision in args.precisions:
            start = time.perf_counter()
            result = evaluate_csp(args.checkpoint, steps=steps, batch_size=args.batch_size, limit=args.limit,
                                  precision=precision)
            # sampling + matching + loading: what a user waits for per evaluated crystal
            result["whole_run_crystals_per_second"] = result["n"] / (time.perf_counter() - start)
            record["runs"].append(result)
            print(json.dumps(result), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
