"""The rediscovery benchmark and the GPU check run end to end at toy sizes, so they cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow.parquet as pq
from support import REPO

BENCH = REPO / "benchmarks"


def _run(script: str, *args) -> dict:
    result = subprocess.run([sys.executable, str(BENCH / script), *map(str, args)], cwd=REPO,
                            capture_output=True, text=True, timeout=900, check=True)  # fmt: skip
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_rediscovery_benchmark_scores_relaxes_and_resumes(tmp_path, tiny_checkpoint):
    common = ["--k", 2, "--targets", 3, "--chunk", 2, "--relax-steps", 20,
              "--record", tmp_path / "records.jsonl"]  # fmt: skip
    for generator in ("random-cell", "crysray"):
        out = tmp_path / generator
        record = _run("bench_rediscovery.py", "--generator", generator, "--checkpoint",
                      tiny_checkpoint, "--steps", 2, "--out", out, *common)  # fmt: skip
        assert record["targets"] == 3 and record["generator"] == generator
        assert record["relaxations"] <= 6 and record["relax"]["relax_steps"] == 20
        assert set(record["rates"]) == {"k1"} and record["rates"]["k1"]["n"] == 3
        rows = pq.read_table(out / "chunk-0000.parquet").to_pandas()
        assert len(rows) == 4 and sorted(rows["candidate"]) == [0, 0, 1, 1]
        relaxed = rows[rows["relax_status"].isin(["converged", "not_converged"])]
        assert relaxed["relaxed_cif"].notna().all() and (relaxed["relax_steps"] <= 20).all()
        first = (out / "chunk-0001.json").read_text()
        again = _run("bench_rediscovery.py", "--generator", generator, "--checkpoint",
                     tiny_checkpoint, "--steps", 2, "--out", out, *common)  # fmt: skip
        assert (out / "chunk-0001.json").read_text() == first  # resumed: nothing redone
        assert again["rates"] == record["rates"]
    lines = (tmp_path / "records.jsonl").read_text().splitlines()
    assert len(lines) == 4


def test_gpu_check_runs_on_cpu_at_toy_sizes(tmp_path, tiny_checkpoint):
    record = _run("gpu_check.py", "--tiny", "--devices", "cpu", "--checkpoint", tiny_checkpoint,
                  "--config", "crysbfn_mp20_csp", "--override", "data.dataset=mp_20_pilot",
                  "train.threads=1", "--record", tmp_path / "gpu.jsonl")  # fmt: skip
    rates = record["cpu"]
    assert set(rates) == {"train_steps_per_second", "sample_fp32_crystals_per_second",
                          "sample_bf16_crystals_per_second", "relax_crystals_per_second"}
    assert all(v > 0 for v in rates.values()) and record["gpu"] is None
    assert json.loads((tmp_path / "gpu.jsonl").read_text()) == record
