"""Training datasets from a Materials Project query (``crysray data mp``).

The query goes through mp-api's summary endpoint (crysray.mp: key, retries, one-line errors);
the raw answer is cached as Parquet keyed by the query, so a rerun, or the same query in
another process, never touches the network. Each material becomes a canonical crystal
(crysray.structures: Niggli cell, wrapped coordinates), exactly as the CSV splits are, and
lands in ``<out>/{train,val,test}.parquet`` (CrystalTable's Parquet form plus the DFT
``formation_energy_per_atom`` and ``e_above_hull``), which ``load_split`` reads directly.

The split is a pure function of ``material_id`` (sha256 -> [0, 1)), so a material keeps its
split when the query or the database grows, and no material can be in two splits.

Preset ``mp20-like``: at most 20 sites and E_hull <= 0.08 eV/atom (MP-20's selection rules,
CDVAE). It is *not* MP-20: MP-20 is a fixed 2021 snapshot of 45,231 materials with a random
60/20/20 split; the preset takes today's database, today's energies and a hash split, so its
materials, its size and every split's membership differ, and numbers measured on it are not
comparable with published MP-20 tables.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from crysray import mp
from crysray.atomic import atomic_path, write_text_atomic
from crysray.data.csv import canonical_table
from crysray.paths import default_cache_dir

logger = logging.getLogger("crysray.data")

FIELDS = ["material_id", "structure", "formation_energy_per_atom", "energy_above_hull",
          "theoretical", "nsites"]  # fmt: skip
SPLITS = (("train", 0.6), ("val", 0.2), ("test", 0.2))
RAW_SCHEMA = pa.schema([
    ("material_id", pa.string()), ("structure", pa.string()),
    ("formation_energy_per_atom", pa.float64()), ("energy_above_hull", pa.float64()),
    ("theoretical", pa.bool_()),
])  # fmt: skip


@dataclass(frozen=True)
class MPQuery:
    """Which materials: all filters combine (AND)."""

    elements: tuple[str, ...] = ()  # materials holding every one of these elements
    chemsys: tuple[str, ...] = ()  # or materials of exactly these systems, e.g. ("Li-Fe-O",)
    max_sites: int = 20
    max_e_above_hull: float | None = None  # eV/atom
    experimental_only: bool = False

    def criteria(self) -> dict:
        out: dict = {"num_sites": (1, self.max_sites)}
        if self.elements:
            out["elements"] = list(self.elements)
        if self.chemsys:
            out["chemsys"] = list(self.chemsys)
        if self.max_e_above_hull is not None:
            out["energy_above_hull"] = (0.0, self.max_e_above_hull)
        if self.experimental_only:
            out["theoretical"] = False
        return out

    def digest(self) -> str:
        text = json.dumps({**asdict(self), "thermo": mp.THERMO_TYPE}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:20]


PRESETS = {"mp20-like": MPQuery(max_sites=20, max_e_above_hull=0.08)}


def split_of(material_id: str) -> str:
    """train / val / test from a hash of the id (stable across queries and database versions)."""
    u = int.from_bytes(hashlib.sha256(material_id.encode()).digest()[:8], "big") / 2.0**64
    edge = 0.0
    for name, share in SPLITS:
        edge += share
        if u < edge:
            return name
    return SPLITS[-1][0]


def query_documents(
    query: MPQuery, key: str | None = None, *, offline: bool = False, cache_dir=None,
    page_size: int = 1000,
) -> tuple[pa.Table, int]:  # fmt: skip
    """(raw documents as RAW_SCHEMA, malformed records skipped), from the cache when possible."""
    cache = Path(cache_dir or default_cache_dir()) / "mp" / "summary" / f"{query.digest()}.parquet"
    if cache.is_file():
        table = pq.read_table(cache)
        return table, int((table.schema.metadata or {}).get(b"skipped", b"0"))
    if offline:
        raise FileNotFoundError(
            f"no cached Materials Project answer for this query ({cache}); run once without "
            "--offline (with MP_API_KEY set) to fetch it"
        )
    key = mp.api_key(key)
    with mp.rester(key) as client:
        docs = mp.search(client, "summary", FIELDS, chunk_size=page_size, **query.criteria())
    rows, skipped = [], 0
    for doc in docs:
        try:
            rows.append({"material_id": str(doc["material_id"]),
                         "structure": json.dumps(doc["structure"]),
                         "formation_energy_per_atom": float(doc["formation_energy_per_atom"]),
                         "energy_above_hull": float(doc["energy_above_hull"]),
                         "theoretical": bool(doc.get("theoretical"))})  # fmt: skip
        except (KeyError, TypeError, ValueError):
            skipped += 1
    table = pa.Table.from_pylist(rows, schema=RAW_SCHEMA)
    table = table.replace_schema_metadata({"skipped": str(skipped)})
    with atomic_path(cache) as tmp:
        pq.write_table(table, tmp)
    return table, skipped


def build_mp_dataset(
    query: MPQuery, out_dir: str | os.PathLike, key: str | None = None, *,
    offline: bool = False, cache_dir=None, workers: int = 2, page_size: int = 1000,
) -> dict:  # fmt: skip
    """Write ``<out_dir>/{train,val,test}.parquet`` and ``dataset.json``; return the summary.

    Refuses an ``out_dir`` that already holds a dataset (nothing is overwritten).
    """
    out_dir = Path(out_dir)
    if (out_dir / "dataset.json").exists():
        raise FileExistsError(f"{out_dir} already holds a dataset; choose another --out")
    raw, skipped_records = query_documents(
        query, key, offline=offline, cache_dir=cache_dir, page_size=page_size
    )
    if raw.num_rows == 0:
        raise ValueError("the Materials Project query matched no materials")
    ids = raw["material_id"].to_pylist()
    structures = [json.loads(s) for s in raw["structure"].to_pylist()]
    table, skipped, kept = canonical_table(ids, structures, "mp query", workers)
    splits = [split_of(m) for m in table.material_id]
    counts = {}
    for name, _ in SPLITS:
        rows = [i for i, s in enumerate(splits) if s == name]
        extra = {column: pa.array([raw[column][kept[i]].as_py() for i in rows])
                 for column in ("formation_energy_per_atom", "energy_above_hull")}  # fmt: skip
        extra["e_above_hull"] = extra.pop("energy_above_hull")
        with atomic_path(out_dir / f"{name}.parquet") as tmp:
            table.subset(rows).to_parquet(tmp, extra)
        counts[name] = len(rows)
    summary = {
        "query": asdict(query), "criteria": query.criteria(), "materials": len(table),
        "splits": counts, "split_rule": "sha256(material_id) -> 60/20/20",
        "skipped_records": skipped_records, "skipped_structures": dict(skipped),
    }  # fmt: skip
    write_text_atomic(out_dir / "dataset.json", json.dumps(summary, indent=1, default=list))
    return summary


def query_from_options(preset: str | None, **options) -> MPQuery:
    """A preset (or the defaults) with the options that were given replacing its values."""
    base = PRESETS[preset] if preset else MPQuery()
    given = {k: v for k, v in options.items() if v not in (None, (), [])}
    return replace(base, **given)
