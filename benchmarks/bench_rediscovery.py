"""Rediscovery benchmark: known ground states found after relaxation, crysray vs random search.

For the DFT ground states (``e_above_hull == 0``) of the MP-20 pilot test split, with the known
cell composition, k candidates per composition come from a generator:

- ``crysray``: a CSP checkpoint (``--checkpoint``), ``--steps`` network evaluations;
- ``pyxtal``: PyXtal random symmetric crystals (crysray.sample.random_search);
- ``random-cell``: random positions in a random cell of the composition's volume (AIRSS-like).

Every candidate is relaxed by the funnel's batched MatGL relaxation (its defaults: FIRE, fmax
0.05 eV/A, 500 steps) and scored by crysray.eval.rediscovery: match@1 / match@k raw and relaxed,
ranked@k, for k = 1, 8, 32 (each up to ``--k``), with wall times and relaxations spent.

Targets are taken in one fixed order: a permutation of the 450 ground states by
``numpy.random.default_rng(2026)``, drawn before any result was seen. ``--targets 100`` is the
k = 32 subset (the first 100 of that order); ``--targets 450`` is all of them. Work is done in
chunks of ``--chunk`` targets written under ``--out`` (rerun = resume); the summary line is
appended to ``benchmarks/results/rediscovery.jsonl``.

python benchmarks/bench_rediscovery.py --generator crysray \
    --checkpoint checkpoints/crysbfn_mp20_csp.pt --k 32 --targets 100
python benchmarks/bench_rediscovery.py --generator pyxtal --k 32 --targets 100
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from crysray.atomic import atomic_path
from crysray.data.csv import dataset_path, load_split
from crysray.eval.csp import candidate_rms
from crysray.eval.rediscovery import CandidateScores, rediscovery_rates
from crysray.filter.config import FunnelConfig
from crysray.filter.funnel import relax_arrays
from crysray.filter.potential import load_potential, model_name
from crysray.filter.uniqueness import uniqueness
from crysray.resources import dataset_file
from crysray.sample.random_search import pyxtal_candidates, random_cell_candidates
from crysray.sample.sampler import Composition, CrystalSampler
from crysray.structures import arrays_to_structure, rows_to_structures, structure_to_arrays

RESULTS = Path(__file__).resolve().parent / "results"
ROW_SCHEMA = pa.schema([
    ("material_id", pa.string()), ("candidate", pa.int64()), ("generated", pa.bool_()),
    ("relax_status", pa.string()), ("relax_steps", pa.int64()),
    ("energy_per_atom", pa.float64()), ("raw_rms", pa.float64()), ("relaxed_rms", pa.float64()),
    ("relaxed_cif", pa.string()), ("raw_duplicate_of", pa.int64()),
])  # fmt: skip
ORDER_SEED = 2026
KS = (1, 8, 32)


def ground_state_targets(count: int):
    """(material ids, target structures) of the first ``count`` pilot-test ground states in
    the fixed order."""
    frame = pd.read_csv(dataset_file("mp_20_pilot", "test"))
    ground = frame.loc[frame["e_above_hull"] == 0, "material_id"].tolist()
    order = [ground[i] for i in np.random.default_rng(ORDER_SEED).permutation(len(ground))]
    table = load_split(dataset_path("mp_20_pilot", "test"))
    index = {m: i for i, m in enumerate(table.material_id)}
    chosen = [m for m in order if m in index][:count]
    structures = table.structures()
    return chosen, [structures[index[m]] for m in chosen]


class Generator:
    """k candidate structures per target composition, deterministic per (chunk, seed)."""

    def __init__(self, args):
        self.kind = args.generator
        self.seed = args.seed
        self.sampler = None
        if self.kind == "crysray":
            self.sampler = CrystalSampler(args.checkpoint, args.steps, batch_size=args.batch_size)

    def candidates(self, chunk: int, targets, k: int) -> list[list]:
        if self.sampler is not None:
            comps = [Composition(str(i), np.array(t.atomic_numbers)) for i, t in enumerate(targets)]
            # candidate j of this chunk from work unit chunk * k + j: one stream per candidate
            units = [rows_to_structures(self.sampler.sample_unit(chunk * k + j, self.seed, comps))
                     for j in range(k)]  # fmt: skip
            return [[units[j][b] for j in range(k)] for b in range(len(targets))]
        rng = np.random.default_rng([self.seed, chunk])
        make = pyxtal_candidates if self.kind == "pyxtal" else random_cell_candidates
        return [make(np.array(t.atomic_numbers), k, rng) for t in targets]


def run_chunk(chunk: int, ids, targets, generator: Generator, potential, k: int, args):
    start = time.perf_counter()
    candidates = generator.candidates(chunk, targets, k)
    generated = time.perf_counter()
    flat = [(b, j, c) for b, cands in enumerate(candidates) for j, c in enumerate(cands)]
    usable = [(b, j, c) for b, j, c in flat if c is not None]
    arrays = [structure_to_arrays(c) for _, _, c in usable]
    config = FunnelConfig(relax_steps=args.relax_steps)
    result = relax_arrays(arrays, potential, config)  # the funnel's relaxation and energy rule
    relaxed_at = time.perf_counter()
    relaxed = {}
    for (b, j, _), r in zip(usable, result):
        ok = r.energy_per_atom is not None
        relaxed[(b, j)] = (
            arrays_to_structure(r.lattice, r.frac_coords, r.atomic_numbers) if ok else None,
            r.energy_per_atom if ok else float("nan"),
            r.status,
            r.steps,
        )
    after = [[relaxed.get((b, j), (None,))[0] for j in range(k)] for b in range(len(targets))]
    # which raw candidates repeat an earlier one of the same target (the funnel's uniqueness
    # matcher): relaxations a campaign could skip by merging duplicates first
    grouped = [uniqueness(cands, [str(j) for j in range(k)]) for cands in candidates]
    duplicates = [duplicate_of for _, duplicate_of in grouped]
    raw_rms = candidate_rms(candidates, targets, args.workers)
    relaxed_rms = candidate_rms(after, targets, args.workers)
    rows = []
    for b, j, c in flat:
        missing = (None, float("nan"), "not generated", 0)
        structure, energy, status, steps = relaxed.get((b, j), missing)
        rows.append({
            "material_id": ids[b], "candidate": j,
            "generated": c is not None, "relax_status": status, "relax_steps": steps,
            "energy_per_atom": energy,
            "raw_rms": raw_rms[b][j], "relaxed_rms": relaxed_rms[b][j],
            "relaxed_cif": structure.to(fmt="cif") if structure is not None else None,
            "raw_duplicate_of": None if duplicates[b][j] is None else int(duplicates[b][j]),
        })  # fmt: skip
    timing = {
        "generation_seconds": generated - start,
        "relax_seconds": relaxed_at - generated,
        "match_seconds": time.perf_counter() - relaxed_at,
        "relaxations": len(usable),
        "distinct_raw": int(sum(unique.sum() for unique, _ in grouped)),
        "fire_steps": sum(r.steps for r in result),
    }
    return pa.Table.from_pylist(rows, schema=ROW_SCHEMA), timing


def _with_schema(table: pa.Table) -> pa.Table:
    """A chunk in ROW_SCHEMA; chunks written before a column existed get it as nulls."""
    for field in ROW_SCHEMA:
        if field.name not in table.column_names:
            table = table.append_column(field.name, pa.nulls(table.num_rows, field.type))
    return table.select(ROW_SCHEMA.names).cast(ROW_SCHEMA)


def summarise(out: Path, ids, k: int, args, potential) -> dict:
    """Rates over the first ``len(ids)`` targets, and the cost of their chunks only (a folder
    may hold more chunks, from a run with more targets)."""
    chunks = range(-(-len(ids) // args.chunk))
    parquet = [out / f"chunk-{c:04d}.parquet" for c in chunks]
    tables = [_with_schema(pq.read_table(p)) for p in parquet if p.exists()]
    frame = pa.concat_tables(tables).to_pandas()
    frame = frame[frame["material_id"].isin(ids)]
    timings = [json.loads(p.with_suffix(".json").read_text()) for p in parquet if p.exists()]
    done = [m for m in ids if m in set(frame["material_id"])]
    scores = []
    for m in done:
        rows = frame[frame["material_id"] == m].sort_values("candidate")
        scores.append(CandidateScores(
            [None if pd.isna(v) else float(v) for v in rows["raw_rms"]],
            [None if pd.isna(v) else float(v) for v in rows["relaxed_rms"]],
            rows["energy_per_atom"].astype(float).tolist(),
        ))  # fmt: skip
    rates = {f"k{kk}": rediscovery_rates(scores, kk) for kk in KS if kk <= k}
    keys = {key for t in timings for key in t}
    total = {key: sum(t.get(key, float("nan")) for t in timings) for key in sorted(keys)}
    return {
        "benchmark": "rediscovery",
        "generator": args.generator,
        "checkpoint": args.checkpoint if args.generator == "crysray" else None,
        "steps": args.steps if args.generator == "crysray" else None,
        "k": k,
        "targets": len(done),
        "target_order": f"pilot test ground states, numpy default_rng({ORDER_SEED}) permutation",
        "rates": rates,
        **total,
        "relaxations_per_target": total["relaxations"] / len(done),
        # distinct raw candidates per relaxation (NaN: chunks written before it was recorded)
        "distinct_raw_share": total.get("distinct_raw", float("nan")) / total["relaxations"],
        "relax_status": frame["relax_status"].value_counts().to_dict(),
        "potential": model_name(potential),
        "relax": {"fmax": FunnelConfig.fmax, "relax_steps": args.relax_steps},
        "torch_threads": torch.get_num_threads(),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
    }


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--generator", choices=("crysray", "pyxtal", "random-cell"), required=True)
    p.add_argument("--checkpoint", default="checkpoints/crysbfn_mp20_csp.pt")
    p.add_argument("--steps", type=int, default=10, help="network evaluations (crysray)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--k", type=int, default=32, help="candidates per target")
    p.add_argument("--targets", type=int, default=100, help="first N targets of the fixed order")
    p.add_argument("--chunk", type=int, default=4, help="targets per resumable chunk")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--relax-steps", type=int, default=FunnelConfig.relax_steps,
                   help="FIRE steps per relaxation (default: the funnel's)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workers", type=int, default=1, help="processes for structure matching")
    p.add_argument("--shard", default="0/1", help="i/n: only chunks i, i + n, ... (n processes)")
    p.add_argument("--out", default=None, help="chunk folder (default benchmarks/results/...)")
    p.add_argument("--record", default=str(RESULTS / "rediscovery.jsonl"))
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    tag = Path(args.checkpoint).stem if args.generator == "crysray" else args.generator
    out = Path(args.out or RESULTS / "rediscovery" / f"{tag}-k{args.k}-seed{args.seed}")
    out.mkdir(parents=True, exist_ok=True)
    ids, targets = ground_state_targets(args.targets)
    generator = Generator(args)
    potential = load_potential()
    shard, shards = (int(x) for x in args.shard.split("/"))
    for chunk, start in enumerate(range(0, len(ids), args.chunk)):
        path = out / f"chunk-{chunk:04d}.parquet"
        if path.exists() or chunk % shards != shard:
            continue
        sl = slice(start, start + args.chunk)
        table, timing = run_chunk(chunk, ids[sl], targets[sl], generator, potential, args.k, args)
        with atomic_path(out / f"chunk-{chunk:04d}.json") as tmp:
            Path(tmp).write_text(json.dumps(timing))
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp)
        print(f"chunk {chunk}: {len(ids[sl])} targets, {timing}", flush=True)
    if shards > 1 and len(list(out.glob("chunk-*.parquet"))) < -(-len(ids) // args.chunk):
        print(f"shard {args.shard} done; rerun without --shard to summarise once all are")
        return {}
    record = summarise(out, ids, args.k, args, potential)
    print(json.dumps(record))
    with open(args.record, "a") as f:
        f.write(json.dumps(record) + "\n")
    return record


if __name__ == "__main__":
    main()
