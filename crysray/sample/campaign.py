"""A sampling campaign in storage: work units, manifest, exactly-once unit files (no Ray here).

Layout of an output location (a local directory or an object-storage prefix, crysray.storage)::

    manifest.json              what this run is (checkpoint hash, inputs, steps, sampler and
                               its options, seed, unit size),
                               plus ``failed_units`` (unit -> error) when some gave up
    data/unit-00000042.parquet one file per finished work unit, written atomically (an
                               object appears complete, or not at all)
    attempts/unit-00000042.json  attempts of a unit not finished yet, and its last error

A unit that fails MAX_UNIT_ATTEMPTS times, by an exception or by killing its replica (e.g. out
of memory), is given up: it is reported as failed instead of being retried forever, and the
rest of the run finishes. Delete its attempts file to try it again. An attempt cut short by an
interruption (Ctrl-C) is not counted: the attempt is marked in flight with the run's session
token, and the interrupted driver takes the marks of its session back
(``forget_interrupted_attempts``).

Work unit u covers sample indices [u * unit_size, min((u + 1) * unit_size, num_samples)); its
targets (crysray.sample.targets) are compositions (CSP: sample k uses composition k mod
len(compositions)) or atom counts drawn from a distribution with the unit's own seed (DNG).
A unit's rows depend only on the manifest and u, so a unit that is retried, or redone after
an interruption, rewrites the same file: the finished dataset holds exactly ``num_samples``
rows with unique ``sample_id``s.
"""

from __future__ import annotations

import json
import time
from dataclasses import MISSING, asdict, dataclass, field, fields

import numpy as np
import pyarrow as pa

from crysray.sample.sampler import CrystalSampler
from crysray.sample.schema import SCHEMA
from crysray.sample.targets import Targets
from crysray.storage import Location, Storage, storage_of

MANIFEST = "manifest.json"
DATA_DIR = "data"
ATTEMPTS_DIR = "attempts"
MAX_UNIT_ATTEMPTS = 3
DIED = "the replica died during the attempt (out of memory?)"
# what the manifest records about how a run went, besides what the run is
RUN_RECORDS = ("failed_units", "skipped_compositions", "out_of_domain", "campaign")


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
    dataset: str = ""  # the checkpoint's training dataset (defaults of later jobs)
    # what is generated: "compositions" (CSP) or "atom_counts" (DNG); compositions_digest
    # is the digest of either (crysray.sample.targets)
    targets: str = "compositions"
    # the method's complete sampler record, {"sampler": name, option: value}; runs written
    # before it existed used CrysBFN's end-back sampler, which has no options
    sampler_options: dict = field(default_factory=lambda: {"sampler": "end-back"})

    @property
    def num_units(self) -> int:
        return -(-self.num_samples // self.unit_size)

    def unit_range(self, unit: int) -> tuple[int, int]:
        start = unit * self.unit_size
        return start, min(start + self.unit_size, self.num_samples)


def unit_name(unit: int) -> str:
    return f"unit-{unit:08d}.parquet"


def unit_key(unit: int) -> str:
    return f"{DATA_DIR}/{unit_name(unit)}"


def unit_of(name: str) -> int:
    """The unit number of a ``unit-XXXXXXXX.<ext>`` file name."""
    return int(name.split(".")[0].split("-")[1])


def open_run(out_dir: Location, spec: CampaignSpec) -> list[int]:
    """Create or resume a run; returns the units still to do.

    Refuses (RunDirectoryError, nothing touched) a location holding another run or other files.
    """
    store = storage_of(out_dir)
    out_dir = store.display()
    if store.exists(MANIFEST):
        saved = json.loads(store.read_text(MANIFEST))
        for key in RUN_RECORDS:
            saved.pop(key, None)
        # fields added since a run was written take their defaults, so old runs still resume
        defaults = {
            f.name: f.default if f.default is not MISSING else f.default_factory()
            for f in fields(CampaignSpec)
            if f.default is not MISSING or f.default_factory is not MISSING
        }
        saved = {**defaults, **saved}
        if saved != asdict(spec):
            diff = sorted(
                k for k in saved.keys() | asdict(spec).keys() if saved.get(k) != asdict(spec).get(k)
            )
            raise RunDirectoryError(
                f"{out_dir} holds another run's files (differs in: {', '.join(diff)}); "
                "choose a new output directory"
            )
    elif not store.is_empty():
        raise RunDirectoryError(
            f"{out_dir} is not empty and is not a crysray sampling run; "
            "choose a new output directory"
        )
    else:
        store.make_dir(DATA_DIR)
        store.write_text(MANIFEST, json.dumps(asdict(spec), indent=1))
    done = set(finished_units(store))
    return [u for u in range(spec.num_units) if u not in done]


def attempts_key(unit: int) -> str:
    return f"{ATTEMPTS_DIR}/unit-{unit:08d}.json"


def read_attempts(out_dir: Location, unit: int) -> dict:
    store = storage_of(out_dir)
    if not store.exists(attempts_key(unit)):
        return {"attempts": 0, "error": None}
    return json.loads(store.read_text(attempts_key(unit)))


def failed_units(out_dir: Location) -> dict[int, str]:
    """Units given up after MAX_UNIT_ATTEMPTS (and not finished since) -> last error."""
    store = storage_of(out_dir)
    finished = set(finished_units(store))
    out = {}
    for name in store.list_names(ATTEMPTS_DIR, "unit-", ".json"):
        unit = unit_of(name)
        record = json.loads(store.read_text(f"{ATTEMPTS_DIR}/{name}"))
        if record["attempts"] >= MAX_UNIT_ATTEMPTS and unit not in finished:
            out[unit] = record["error"]
    return out


def record_failures(out_dir: Location) -> dict[int, str]:
    """Write the given-up units into the manifest (replacing an earlier list); return them."""
    store = storage_of(out_dir)
    text = store.read_text(MANIFEST)
    saved = json.loads(text)
    failed = failed_units(store)
    saved.pop("failed_units", None)
    if failed:
        saved["failed_units"] = {str(u): e for u, e in failed.items()}
    if json.dumps(saved, indent=1) != text:  # a finished rerun leaves the manifest untouched
        store.write_text(MANIFEST, json.dumps(saved, indent=1))
    return failed


def record_manifest_section(out_dir: Location, key: str, value: dict | None) -> None:
    """Set (or, with None, remove) one informational section of a run's manifest, e.g. the
    composition lines it skipped or the ones outside the model's domain."""
    store = storage_of(out_dir)
    text = store.read_text(MANIFEST)
    saved = json.loads(text)
    saved.pop(key, None)
    if value:
        saved[key] = value
    if json.dumps(saved, indent=1) != text:
        store.write_text(MANIFEST, json.dumps(saved, indent=1))


def forget_interrupted_attempts(out_dir: Location, session: str) -> int:
    """Take back the attempts ``session`` had in flight when it was interrupted.

    A replica killed by Ctrl-C did not fail its unit; counting the attempt would give units up
    after three interruptions. Returns how many attempts were taken back.
    """
    store = storage_of(out_dir)
    taken = 0
    for name in store.list_names(ATTEMPTS_DIR, "unit-", ".json"):
        key = f"{ATTEMPTS_DIR}/{name}"
        record = json.loads(store.read_text(key))
        if record.get("in_flight") != session:
            continue
        taken += 1
        if record["attempts"] <= 1:
            store.delete(key)
        else:
            before = {"attempts": record["attempts"] - 1, "error": record.get("before")}
            store.write_text(key, json.dumps(before))
    return taken


def finished_units(out_dir: Location) -> list[int]:
    """Units whose file exists: on object storage, one listing of the prefix."""
    return [unit_of(n) for n in storage_of(out_dir).list_names(DATA_DIR, "unit-", ".parquet")]


def write_unit(store: Storage, unit: int, table: pa.Table, metadata: dict[bytes, bytes]) -> None:
    """Atomic: readers and resumes only ever see complete unit files."""
    store.write_table(
        unit_key(unit),
        table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata}),
    )


class CampaignWorker:
    """One model replica; maps a batch of work units to a batch of per-unit summaries.

    Rows go straight from the replica to their unit file: the driver only sees summaries, so
    its memory stays bounded whatever the number of samples.
    """

    def __init__(
        self,
        checkpoint: str,
        out_dir: str,
        spec: dict,
        targets: Targets,
        threads: int | None = None,
        device: str | None = None,
        session: str | None = None,
        progress=None,
    ):
        """``session``: the driver's token, marked on attempts in flight; ``progress``: an
        object whose ``add(crystals)`` is called after every network batch (or None)."""
        self.spec = CampaignSpec(**spec)
        self.session, self.progress = session, progress
        if targets.kind != self.spec.targets or targets.digest() != self.spec.compositions_digest:
            raise ValueError("the campaign's targets do not match its manifest")
        self.store = Storage(out_dir)
        self.targets = targets
        self.sampler = CrystalSampler(
            checkpoint,
            self.spec.steps,
            self.spec.batch_size,
            device,
            threads,
            self.spec.precision,
            self.spec.sampler_options,
        )
        self.metadata = {
            b"crysray_schema_version": SCHEMA.metadata[b"crysray_schema_version"],
            b"crysray_run": json.dumps(spec).encode(),
        }

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        summaries = [self.run_unit(int(u)) for u in batch["unit"]]
        keys = ("unit", "rows", "valid", "seconds", "failed")
        return {k: np.array([s[k] for s in summaries]) for k in keys}

    def run_unit(self, unit: int) -> dict:
        start_time = time.perf_counter()
        if self.store.exists(unit_key(unit)):  # finished by an earlier attempt of this unit
            flags = self.store.read_table(unit_key(unit), columns=["valid_structure"]).column(0)
            valid = int(pa.compute.sum(flags).as_py() or 0)
            return {"unit": unit, "rows": len(flags), "valid": valid,
                    "seconds": 0.0, "failed": False}  # fmt: skip
        table = self._sample_with_attempts(unit)
        if table is None:
            return {"unit": unit, "rows": 0, "valid": 0, "seconds": 0.0, "failed": True}
        write_unit(self.store, unit, table, self.metadata)
        self.store.delete(attempts_key(unit))
        valid = int(np.sum(table.column("valid_structure").to_numpy(zero_copy_only=False)))
        return {"unit": unit, "rows": table.num_rows, "valid": valid,
                "seconds": time.perf_counter() - start_time, "failed": False}  # fmt: skip

    def _sample_with_attempts(self, unit: int) -> pa.Table | None:
        """The unit's rows, or None once MAX_UNIT_ATTEMPTS attempts have failed.

        An exception is retried here (Ray Data does not retry user errors); an attempt that
        kills the process is retried by Ray on a restarted replica. Each attempt is counted
        on disk before it starts, so both kinds add up to the same bound.
        """
        start, stop = self.spec.unit_range(unit)
        targets = self.targets.for_unit(start, stop, self.spec.seed, unit)
        key = attempts_key(unit)
        while (attempt := (before := read_attempts(self.store, unit))["attempts"] + 1) <= (
            MAX_UNIT_ATTEMPTS
        ):
            in_flight = {"attempts": attempt, "error": DIED, "in_flight": self.session,
                         "before": before["error"]}  # fmt: skip
            self.store.write_text(key, json.dumps(in_flight))
            try:
                return self.sampler.sample_unit(
                    unit, self.spec.seed, targets, first_index=start, on_batch=self._on_batch
                )
            except KeyboardInterrupt:  # an interruption, not a failure of the unit
                self._take_back(key, before)
                raise
            except Exception as err:  # noqa: BLE001 - recorded, then retried or given up
                error = f"{type(err).__name__}: {err}"[:500]
                self.store.write_text(key, json.dumps({"attempts": attempt, "error": error}))
        return None

    def _take_back(self, key: str, before: dict) -> None:
        if before["attempts"]:
            self.store.write_text(key, json.dumps(before))
        else:
            self.store.delete(key)

    def _on_batch(self, crystals: int) -> None:
        if self.progress is not None:
            self.progress.add(crystals)
