"""Composition lists of any size: driver and reader memory, 10 million formulas vs 100,000.

For each size, a Parquet file of formulas (``formula``, ``id``) is generated with pyarrow, then
a fresh process does what mass_sample's driver does with it (check and convert to
compositions.parquet, copy it into a run directory), and another fresh process what an actor
does (unpickle the targets, read units spread over the whole list, wrap-around included).
Reported: the driver's peak RSS and its growth over the imports, the reader's peak RSS and its
growth from its first unit to its last, seconds, bytes shipped to each actor.

    python benchmarks/bench_composition_store.py                 # 100k and 10M, recorded
    python benchmarks/bench_composition_store.py --sizes 100000 2000000 --no-record
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULTS = REPO / "benchmarks" / "results" / "composition_store.json"
UNIT = 1024
READS = 200  # units read by the reader, spread over twice the list (so it wraps around)


def make_formulas(path: Path, n: int, seed: int = 0, chunk: int = 1 << 20) -> None:
    """``n`` ternary oxides A_a B_b O_c, a few atoms to ~20, written a chunk at a time."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    metals = pa.array(
        [
            "Li",
            "Na",
            "K",
            "Mg",
            "Ca",
            "Sr",
            "Ba",
            "Ti",
            "Zr",
            "Fe",
            "Co",
            "Ni",
            "Cu",
            "Zn",
            "Al",
            "Ga",
            "La",
            "Y",
            "Nb",
            "Ta",
            "Mn",
            "Cr",
            "V",
            "Sn",
        ]
    )
    rng = np.random.default_rng(seed)
    schema = pa.schema([("formula", pa.string()), ("id", pa.string())])
    with pq.ParquetWriter(path, schema) as writer:
        for first in range(0, n, chunk):
            size = min(chunk, n - first)
            parts = [
                metals.take(pa.array(rng.integers(0, len(metals), size))),
                pa.array(rng.integers(1, 5, size).astype(str)),
                metals.take(pa.array(rng.integers(0, len(metals), size))),
                pa.array(rng.integers(1, 5, size).astype(str)),
                pa.array(np.full(size, "O")),
                pa.array(rng.integers(1, 13, size).astype(str)),
            ]
            formulas = pc.binary_join_element_wise(*parts, "")
            ids = pc.binary_join_element_wise(
                "c", pa.array(np.arange(first, first + size).astype(str)), ""
            )
            writer.write_table(pa.table([formulas, ids], schema=schema), row_group_size=65536)


def measure_driver(source: Path, run: Path) -> dict:
    """What mass_sample's driver does, in this (fresh) process: convert ``source`` and publish
    it into ``run``; the targets an actor receives are pickled to ``run/targets.pickle``."""
    import pickle
    import resource

    import psutil

    from crysray.sample.composition_store import (
        STORE_KEY,
        StoredCompositions,
        convert_compositions,
        publish,
    )
    from crysray.sample.compositions import CompositionLimits

    proc = psutil.Process()
    with tempfile.TemporaryDirectory() as warm:  # what pymatgen and pyarrow load on first use
        tiny = Path(warm) / "tiny.txt"
        tiny.write_text("SrTiO3\nNaCl\n")
        convert_compositions(tiny, Path(warm) / STORE_KEY)
    imported = proc.memory_info().rss
    with tempfile.TemporaryDirectory() as scratch:
        start = time.perf_counter()
        converted = convert_compositions(source, Path(scratch) / STORE_KEY, CompositionLimits())
        local = StoredCompositions(scratch, converted.count, converted.digest)
        targets = publish(local, run)
        convert_seconds = time.perf_counter() - start
    driver_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    shipped = pickle.dumps(targets)
    (run / "targets.pickle").write_bytes(shipped)
    return {
        "compositions": converted.count,
        "convert_seconds": round(convert_seconds, 1),
        "convert_per_second": round(converted.count / convert_seconds),
        "driver_imports_rss_mb": round(imported / 2**20, 1),
        "driver_peak_rss_mb": round(driver_peak / 2**20, 1),
        "driver_growth_mb": round((driver_peak - imported) / 2**20, 1),
        "shipped_bytes": len(shipped),
        "stored_mb": round((run / STORE_KEY).stat().st_size / 2**20, 1),
    }


def measure_reader(run: Path) -> dict:
    """What an actor does, in this (fresh) process: unpickle the targets and read ``READS``
    units spread over twice the list (so it wraps around). Growth is counted from the first
    unit read (imports and the opened file excluded) to the end."""
    import pickle
    import resource

    import psutil

    proc = psutil.Process()
    reader = pickle.loads((run / "targets.pickle").read_bytes())
    reader.for_unit(0, UNIT, 0, 0)
    first_unit = proc.memory_info().rss
    step = 2 * reader.count // READS
    start = time.perf_counter()
    for unit in range(READS):
        first = unit * step + 777  # not aligned to row groups
        reader.for_unit(first, first + UNIT, 0, unit)
    return {
        "reader_first_unit_rss_mb": round(first_unit / 2**20, 1),
        "reader_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10, 1),
        "reader_growth_mb": round((proc.memory_info().rss - first_unit) / 2**20, 1),
        "for_unit_ms": round(1000 * (time.perf_counter() - start) / READS, 2),
    }


def measure_in_subprocess(n: int, workdir: Path) -> dict:
    source = workdir / f"formulas-{n}.parquet"
    if not source.exists():
        make_formulas(source, n)
    run = workdir / f"run-{n}"
    run.mkdir()
    out = {"input_mb": round(source.stat().st_size / 2**20, 1)}
    for args in (["--measure-driver", str(source), str(run)], ["--measure-reader", str(run)]):
        result = subprocess.run(
            [sys.executable, __file__, *args], capture_output=True, text=True, check=True
        )
        out.update(json.loads(result.stdout))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 10_000_000])
    p.add_argument("--measure-driver", type=Path, nargs=2, metavar=("SOURCE", "RUN"))
    p.add_argument("--measure-reader", type=Path, metavar="RUN")
    p.add_argument("--no-record", action="store_true")
    args = p.parse_args()
    if args.measure_driver:
        print(json.dumps(measure_driver(*args.measure_driver)))
        return
    if args.measure_reader:
        print(json.dumps(measure_reader(args.measure_reader)))
        return
    with tempfile.TemporaryDirectory() as workdir:
        runs = [measure_in_subprocess(n, Path(workdir)) for n in args.sizes]
    for run in runs:
        print(json.dumps(run))
    if not args.no_record:
        RESULTS.write_text(json.dumps({"machine": platform.processor() or platform.machine(),
                                       "unit_size": UNIT, "runs": runs}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
