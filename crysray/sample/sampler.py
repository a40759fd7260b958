"""CrystalSampler: one model replica that turns work units into Parquet-ready rows.

A plain callable class with no Ray import: Ray Data (``jobs/mass_sample.py``) builds one per
actor; tests and benchmarks call it directly. A work unit is reproducible on its own: its
crystals come from a ``torch.Generator`` seeded by (run seed, work unit), so a retried or
resumed unit regenerates exactly the same rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from crysray.sample.schema import batch_to_table
from crysray.train.checkpoint import checkpoint_hash, load_model
from crysray.types import SampleSpec


@dataclass(frozen=True)
class Composition:
    """A CSP target: atomic numbers of one cell and where they came from."""

    source_id: str
    atomic_numbers: np.ndarray  # (n,) int

    @property
    def num_atoms(self) -> int:
        return len(self.atomic_numbers)


@dataclass(frozen=True)
class AtomCount:
    """A DNG target: a cell of ``num_atoms`` atoms whose types the model generates."""

    num_atoms: int
    source_id: str = ""
    atomic_numbers: None = None  # no types given


Target = Composition | AtomCount  # one sample of a work unit


# bf16: the message-passing backbone under bfloat16 autocast (AMX / tensor cores), heads and
# flow updates in float32; compare match rates with fp32 before relying on it
PRECISIONS = {"fp32", "bf16"}


def unit_generator(
    seed: int, work_unit: int, device: str | torch.device = "cpu"
) -> torch.Generator:
    """The unit's random stream, on the device the model samples on (the noise is drawn there;
    a unit is reproducible on a given device type, not across CPU and GPU)."""
    # distinct, well-mixed streams per unit (not seed + unit, which collides across runs)
    state = int(np.random.SeedSequence([seed, work_unit]).generate_state(1)[0])
    return torch.Generator(device=device).manual_seed(state)


def add_sampler_arguments(parser) -> None:
    """``--sampler`` and ``--sampler-option``, as every sampling entry point takes them."""
    parser.add_argument(
        "--sampler",
        default=None,
        help="the method's sampler (default: its first; CrysBFN: end-back; KLDM: pc or em)",
    )
    parser.add_argument(
        "--sampler-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a sampler option, repeatable (e.g. KLDM pc: corrector_steps=2, snr=0.25)",
    )


def sampler_options_from_args(args) -> dict:
    """What ``add_sampler_arguments`` parsed, as ``GenerativeMethod.sampler_options`` input."""
    return {"sampler": args.sampler, **parse_sampler_options(args.sampler_option)}


def parse_sampler_options(items: list[str]) -> dict:
    """``["key=value", ...]`` from a command line -> options (values parsed as YAML scalars)."""
    import yaml

    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"sampler option {item!r}: expected KEY=VALUE")
        options[key] = yaml.safe_load(value)
    return options


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


class CrystalSampler:
    """Loads a checkpoint once; ``sample_unit`` generates one work unit's crystals."""

    def __init__(
        self,
        checkpoint: str,
        steps: int,
        batch_size: int = 512,
        device: str | None = None,
        threads: int | None = None,
        precision: str = "fp32",
        sampler_options: dict | None = None,
    ):
        """``sampler_options``: ``{"sampler": name, option: value}`` (default: the method's
        default sampler); completed and checked by the method."""
        if threads:
            torch.set_num_threads(threads)
        if steps < 1:
            raise ValueError(f"number of steps must be >= 1, got {steps}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        self.device = device or default_device()
        self.model = load_model(checkpoint, self.device)
        self.checkpoint_hash = checkpoint_hash(checkpoint)
        self.steps, self.batch_size, self.precision = int(steps), int(batch_size), precision
        self.sampler_options = self.model.sampler_options(**(sampler_options or {}))
        self.network_evaluations = self.model.network_evaluations(
            self.steps, **self.sampler_options
        )

    def sample_unit(
        self,
        work_unit: int,
        seed: int,
        compositions: list[Target],
        first_index: int = 0,
        on_batch=None,
    ) -> pa.Table:
        """Crystals for ``compositions`` (CSP) or atom counts (DNG), in batches of
        ``batch_size``, as one table.

        ``on_batch(crystals)``, if given, is called after each batch (progress within a unit).
        """
        generator = unit_generator(seed, work_unit, self.device)
        tables = []
        for start in range(0, len(compositions), self.batch_size):
            chunk = compositions[start : start + self.batch_size]
            with torch.autocast(
                torch.device(self.device).type,
                dtype=torch.bfloat16,
                enabled=self.precision == "bf16",
            ):
                crystals = self.model.sample(
                    spec_batch(chunk), self.steps, generator, **self.sampler_options
                )
            tables.append(
                batch_to_table(
                    crystals,
                    work_unit=work_unit,
                    first_index=first_index + start,
                    source_ids=[c.source_id for c in chunk],
                    method=self.model.name,
                    checkpoint_hash=self.checkpoint_hash,
                    steps=self.steps,
                    seed=seed,
                    sampler_options=self.sampler_options,
                    network_evaluations=self.network_evaluations,
                )
            )
            if on_batch is not None:
                on_batch(len(chunk))
        return pa.concat_tables(tables)


def spec_batch(targets: list[Target]) -> SampleSpec:
    """The sample spec of a list of targets: atom counts, and the atom types when the targets
    give them (compositions, CSP) or None when the model generates them (atom counts, DNG)."""
    counts = np.array([t.num_atoms for t in targets], dtype=np.int64)
    given = [t.atomic_numbers is not None for t in targets]
    if any(given) and not all(given):
        raise ValueError("a batch mixes compositions (CSP) and atom counts (DNG)")
    atom_types = None
    if all(given) and targets:
        z = np.concatenate([t.atomic_numbers for t in targets]).astype(np.int64)
        atom_types = torch.from_numpy(z)
    return SampleSpec(torch.from_numpy(counts), atom_types)


composition_batch = spec_batch  # the CSP name the benchmarks use
