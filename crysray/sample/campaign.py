"""A sampling campaign on disk: work units, manifest, exactly-once unit files (no Ray here).

Layout of an output directory::

    manifest.json              what this run is (checkpoint hash, inputs, N, seed, unit size)
    data/unit-00000042.parquet one file per finished work unit, written atomically

Work unit u covers sample indices [u * unit_size, min((u + 1) * unit_size, num_samples)); in
CSP mode sample k uses composition k mod len(compositions). A unit's rows depend only on the
manifest and u, so a unit that is retried, or redone after an interruption, rewrites the same
file: the finished dataset holds exactly ``num_samples`` rows with unique ``sample_id``s.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from crysray.sample.sampler import Composition, CrystalSampler
from crysray.sample.schema import SCHEMA

MANIFEST = "manifest.json"
DATA_DIR = "data"


class RunDirectoryError(ValueError):
    """The output directory belongs to something else."""


@dataclass(frozen=True)
class CampaignSpec:
    task: str
    checkpoint_hash: str
    compositions_digest: str
    num_samples: int
    steps: int
    seed: int
    unit_size: int
    batch_size: int
    precision: str = "fp32"

    @property
    def num_units(self) -> int:
        return -(-self.num_samples // self.unit_size)

    def unit_range(self, unit: int) -> tuple[int, int]:
        start = unit * self.unit_size
        return start, min(start + self.unit_size, self.num_samples)


def compositions_digest(compositions: list[Composition]) -> str:
    h = hashlib.sha256()
    for c in compositions:
        h.update(c.source_id.encode() + b"\0" + np.asarray(c.atomic_numbers, dtype=np.int64).tobytes() + b"\n")
    return h.hexdigest()[:16]


def unit_path(out_dir: Path, unit: int) -> Path:
    return Path(out_dir) / DATA_DIR / f"unit-{unit:08d}.parquet"


def open_run(out_dir: str | Path, spec: CampaignSpec) -> list[int]:
    """Create or resume a run; returns the units still to do.

    Refuses (RunDirectoryError, nothing touched) a directory holding another run or other files.
    """
    out_dir = Path(out_dir)
    manifest = out_dir / MANIFEST
    if manifest.exists():
        saved = json.loads(manifest.read_text())
        if saved != asdict(spec):
            diff = sorted(k for k in saved.keys() | asdict(spec).keys() if saved.get(k) != asdict(spec).get(k))
            raise RunDirectoryError(f"{out_dir} holds another run's files (differs in: {', '.join(diff)}); "
                                    "choose a new output directory")
    elif out_dir.exists() and any(out_dir.iterdir()):
        raise RunDirectoryError(f"{out_dir} is not empty and is not a crysray sampling run; choose a new output directory")
    else:
        (out_dir / DATA_DIR).mkdir(parents=True, exist_ok=True)
        tmp = out_dir / f".{MANIFEST}.tmp"
        tmp.write_text(json.dumps(asdict(spec), indent=1))
        os.replace(tmp, manifest)
    done = set(finished_units(out_dir))
    return [u for u in range(spec.num_units) if u not in done]


def finished_units(out_dir: str | Path) -> list[int]:
    files = (Path(out_dir) / DATA_DIR).glob("unit-*.parquet")
    return sorted(int(p.stem.split("-")[1]) for p in files)


def write_unit(out_dir: Path, unit: int, table: pa.Table, metadata: dict[bytes, bytes]) -> None:
    """Atomic: readers and resumes only ever see complete unit files."""
    path = unit_path(out_dir, unit)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata}), tmp)
    os.replace(tmp, path)


class CampaignWorker:
    """One model replica; maps a batch of work units to a batch of per-unit summaries.

    Rows go straight from the replica to their unit file: the driver only sees summaries, so
    its memory stays bounded whatever the number of samples.
    """

    def __init__(self, checkpoint: str, out_dir: str, spec: dict, compositions: list[Composition],
                 threads: int | None = None, device: str | None = None):
        self.spec = CampaignSpec(**spec)
        self.out_dir = Path(out_dir)
        self.compositions = compositions
        self.sampler = CrystalSampler(checkpoint, self.spec.steps, self.spec.batch_size, device, threads,
                                      self.spec.precision)
        self.metadata = {b"crysray_schema_version": SCHEMA.metadata[b"crysray_schema_version"],
                         b"crysray_run": json.dumps(spec).encode()}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        summaries = [self.run_unit(int(u)) for u in batch["unit"]]
        return {k: np.array([s[k] for s in summaries]) for k in ("unit", "rows", "valid", "seconds")}

    def run_unit(self, unit: int) -> dict:
        start_time = time.perf_counter()
        path = unit_path(self.out_dir, unit)
        if path.exists():  # finished by an earlier attempt of this unit
            valid = pq.read_table(path, columns=["valid_structure"]).column(0)
            return {"unit": unit, "rows": len(valid), "valid": int(pa.compute.sum(valid).as_py() or 0), "seconds": 0.0}
        start, stop = self.spec.unit_range(unit)
        targets = [self.compositions[k % len(self.compositions)] for k in range(start, stop)]
        table = self.sampler.sample_unit(unit, self.spec.seed, targets, first_index=start)
        write_unit(self.out_dir, unit, table, self.metadata)
        valid = int(np.sum(table.column("valid_structure").to_numpy(zero_copy_only=False)))
        return {"unit": unit, "rows": table.num_rows, "valid": valid, "seconds": time.perf_counter() - start_time}
