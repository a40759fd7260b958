"""CDVAE-format CSV splits -> canonical CrystalTable, cached as Parquet.

Each row's ``cif`` is parsed and canonicalised (crysray.structures, docs/methods.md C1) in a
process pool. Rows that fail are skipped and counted, never fatal. The result is cached under
a key made of the file's sha256 and PROCESSING_VERSION, so a second load reads Parquet only.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import os
import uuid
from collections import Counter
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import pandas as pd
from pymatgen.core import Structure

from crysray.data.dataset import CrystalTable
from crysray.paths import default_cache_dir
from crysray.resources import dataset_file
from crysray.structures import canonical_structure, check_structure, parse_cif, structure_to_arrays

logger = logging.getLogger("crysray.data")

# Bump whenever parsing or canonicalisation changes: it invalidates every cached table.
PROCESSING_VERSION = "crysray-csv-2:niggli,obtuse-if-right-angle,from_parameters,wrap01"
CHUNK_ROWS = 256  # rows per pool task: large enough to amortise pickling, small for balance

Row = tuple[np.ndarray, np.ndarray, np.ndarray]  # lattice (3, 3), frac (n, 3), Z (n,)


def dataset_path(name: str, split: str, data_dir: str | Path | None = None) -> Path:
    """``<data_dir>/<name>/<split>.csv``, ``.csv.gz`` or ``.parquet``, whichever exists.

    Without ``data_dir`` the split is found (or downloaded) by ``crysray.resources.dataset_file``.
    """
    if data_dir is None:
        return dataset_file(name, split)
    folder = Path(data_dir)
    candidates = [folder / name / f"{split}{ext}" for ext in (".csv", ".csv.gz", ".parquet")]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(f"no {split}.csv(.gz)/.parquet for dataset {name!r} in {folder / name}")


def load_split(
    path: str | Path, cache_dir: str | Path | None = None, workers: int = 2
) -> CrystalTable:
    """Canonical crystals of a CSV split, from the Parquet cache when possible.

    Args:
        path: CDVAE-format ``.csv`` or ``.csv.gz`` with a ``cif`` column.
        cache_dir: where cached tables live (default ``default_cache_dir()``).
        workers: processes used to parse CIFs on a cache miss (<= 1: in this process).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: no row of the file gives a usable crystal.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: dataset file not found")
    if path.suffix == ".parquet":  # already canonical (e.g. written by `crysray data mp`)
        return CrystalTable.from_parquet(path)
    data = path.read_bytes()
    cache = _cache_file(path, data, Path(cache_dir) if cache_dir else default_cache_dir())
    if cache.is_file():
        try:
            return CrystalTable.from_parquet(cache)
        except Exception as e:  # noqa: BLE001 - a truncated or foreign file: rebuild it
            logger.warning("%s: unreadable cache %s (%s), rebuilding", path, cache, e)
    table, _ = process_csv(path, data, workers=workers)
    _write_cache(table, cache)
    return table


def process_csv(
    path: str | Path, data: bytes | None = None, workers: int = 2
) -> tuple[CrystalTable, Counter]:
    """Parse and canonicalise every row (no cache). Returns (table, skip reasons -> counts)."""
    path = Path(path)
    frame = _read_frame(path, data if data is not None else path.read_bytes())
    table, skipped, _ = canonical_table(frame["material_id"].tolist(), frame["cif"].tolist(),
                                        str(path), workers)  # fmt: skip
    return table, skipped


def canonical_table(
    material_ids: list[str], items: list, source: str, workers: int = 2
) -> tuple[CrystalTable, Counter, list[int]]:
    """Canonical crystals of CIF strings or pymatgen Structure dicts, skipping bad ones.

    Returns (table, skip reasons -> counts, indices of the items kept).
    """
    results = _map_rows(items, workers)
    good = [i for i, r in enumerate(results) if not isinstance(r, str)]
    skipped = Counter(r for r in results if isinstance(r, str))
    n_skipped = sum(skipped.values())
    if n_skipped:
        reasons = ", ".join(f"{reason}: {k}" for reason, k in skipped.most_common())
        logger.warning("%s: skipped %d of %d rows (%s)", source, n_skipped, len(items), reasons)
    else:
        logger.info("%s: loaded all %d rows", source, len(items))
    if not good:
        raise ValueError(f"{source}: no usable crystals ({len(items)} rows, {n_skipped} skipped)")
    table = CrystalTable.from_arrays(
        material_id=[material_ids[i] for i in good],
        lattices=[results[i][0] for i in good],
        fracs=[results[i][1] for i in good],
        types=[results[i][2] for i in good],
    )
    return table, skipped, good


def _read_frame(path: Path, data: bytes) -> pd.DataFrame:
    """``material_id`` (str) and ``cif`` (str or NaN) columns of the CSV bytes."""
    try:
        if path.name.endswith(".gz"):
            data = gzip.decompress(data)
        frame = pd.read_csv(io.BytesIO(data), dtype={"material_id": str})
    except pd.errors.EmptyDataError:  # a zero-byte file: no header, no rows
        frame = pd.DataFrame({"cif": []})
    except (OSError, EOFError, UnicodeDecodeError, pd.errors.ParserError) as e:
        raise ValueError(f"{path}: unreadable CSV ({type(e).__name__}: {e})") from None
    if "cif" not in frame.columns:
        raise ValueError(f"{path}: no 'cif' column (columns: {list(frame.columns)})")
    if "material_id" not in frame.columns:
        frame["material_id"] = [str(i) for i in range(len(frame))]
    return frame[["material_id", "cif"]]


def _map_rows(cifs: list, workers: int) -> list[Row | str]:
    chunks = [cifs[i : i + CHUNK_ROWS] for i in range(0, len(cifs), CHUNK_ROWS)]
    if workers <= 1 or len(chunks) <= 1:
        done = [_process_chunk(c) for c in chunks]
    else:
        with Pool(min(workers, len(chunks))) as pool:
            done = pool.map(_process_chunk, chunks, chunksize=1)
    return [r for chunk in done for r in chunk]


def _process_chunk(cifs: list) -> list[Row | str]:
    return [_process_row(cif) for cif in cifs]


def _process_row(item) -> Row | str:
    """Canonical arrays of one CIF string or Structure dict, or the short reason it was skipped."""
    if isinstance(item, dict):
        try:
            structure = Structure.from_dict(item)
            check_structure(structure)
        except Exception:  # noqa: BLE001 - any malformed record is a counted skip
            return "malformed structure record"
        return _canonical_arrays(structure)
    if not isinstance(item, str) or not item.strip():
        return "missing cif"
    try:
        structure = parse_cif(item)
    except ValueError as e:
        return str(e).split(":", 1)[0]
    return _canonical_arrays(structure)


def _canonical_arrays(structure) -> Row | str:
    try:
        return structure_to_arrays(canonical_structure(structure))
    except Exception as e:  # noqa: BLE001 - Niggli reduction can fail on odd cells
        return f"canonicalisation failed ({type(e).__name__})"


def _cache_file(path: Path, data: bytes, cache_dir: Path) -> Path:
    digest = hashlib.sha256(data)
    digest.update(PROCESSING_VERSION.encode())
    stem = path.name.split(".")[0]
    return cache_dir / f"{path.parent.name}-{stem}-{digest.hexdigest()[:24]}.parquet"


def _write_cache(table: CrystalTable, cache: Path) -> None:
    # Write to a unique temporary name and rename, so concurrent loaders (one per DDP rank)
    # never read a half-written file.
    tmp = cache.with_name(f".{cache.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        table.to_parquet(tmp)
        os.replace(tmp, cache)
    except OSError as e:  # a read-only cache must not stop training
        logger.warning("could not write cache %s: %s", cache, e)
        tmp.unlink(missing_ok=True)
