"""``crysray data mp`` at 10,000 materials: a fetch through mp-api, then the cached answer.

The Materials Project is played by the test server of tests/mp_server.py on 127.0.0.1,
serving the MP rows of ../shared/data (MP-20 pilot train/val/test, MP-20 binary/ternary val,
MPTS-52 val; the first 10,000 distinct materials) as summary documents. Both runs build the
same dataset into fresh directories; the
second reads the cached answer and must not touch the network.

    python benchmarks/bench_data_mp.py --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from mp_server import KEY, FakeMP, summary_docs

from crysray.data.mp import MPQuery, build_mp_dataset
from crysray.resources import dataset_file

RESULTS = REPO / "benchmarks" / "results"


def rows(n: int) -> pd.DataFrame:
    parts = [("mp_20_pilot", s) for s in ("train", "val", "test")]
    parts += [("mp_20_biternary", "val"), ("mpts_52", "val")]
    frames = [pd.read_csv(dataset_file(*p)).rename(columns={"energy_above_hull": "e_above_hull"})
              for p in parts]  # fmt: skip
    frame = pd.concat(frames, ignore_index=True)
    return frame.drop_duplicates("material_id").head(n)


def main(n: int, workers: int) -> dict:
    docs = summary_docs(rows(n), theoretical_every=10**9)
    report = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "documents": len(docs), "workers": workers}  # fmt: skip
    with FakeMP(summary=docs) as server, tempfile.TemporaryDirectory() as tmp:
        os.environ.update({"CRYSRAY_MP_ENDPOINT": server.endpoint, "MP_API_KEY": KEY})
        query = MPQuery(max_sites=52)
        for label in ("fetch", "cached"):
            start = time.perf_counter()
            summary = build_mp_dataset(query, Path(tmp) / label, cache_dir=Path(tmp) / "cache",
                                       workers=workers)  # fmt: skip
            report[f"{label}_seconds"] = time.perf_counter() - start
            report[f"{label}_materials"] = summary["materials"]
            report[f"{label}_skipped"] = summary["skipped_records"] + sum(
                summary["skipped_structures"].values()
            )
            report[f"{label}_requests"] = len(server.data_requests())
    print(json.dumps(report, indent=1))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "data_mp.json").write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    main(args.n, args.workers)
