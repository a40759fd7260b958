"""CSP composition lists of any size: converted once into a Parquet file of the run, read by range.

The driver streams a composition file (crysray.sample.compositions: text, CSV split or
Parquet) through the usual checks into ``compositions.parquet`` next to the manifest::

    source_id       string
    atomic_numbers  list<int16>      one cell, as Z

in row groups of at most ``ROW_GROUP_ROWS`` rows, with the digest and the row count in the
file's metadata. Actors get a ``StoredCompositions``: the location, the count and the digest,
a few bytes whatever the list's length. A unit reads only the row groups it covers and keeps
the last two, so memory per actor is a row group or two (~1-2 MB), and the driver's is one
chunk of the conversion.
"""

from __future__ import annotations

import hashlib
from collections import Counter, OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from crysray.atomic import atomic_path
from crysray.sample.compositions import CompositionLimits, checked_chunks
from crysray.sample.sampler import Composition
from crysray.sample.targets import Targets
from crysray.storage import Location, Storage, storage_of

STORE_KEY = "compositions.parquet"
ROW_GROUP_ROWS = 65536  # ~1.5 MB of 10-atom cells: what an actor reads for one unit
DIGEST_META = b"crysray_compositions_digest"
COUNT_META = b"crysray_compositions_count"
SCHEMA = pa.schema([("source_id", pa.string()), ("atomic_numbers", pa.list_(pa.int16()))])


@dataclass(frozen=True)
class ConvertedCompositions:
    """A composition file after conversion: the local Parquet file and what it holds."""

    path: Path
    count: int
    digest: str
    skipped: Counter
    # the skipped lines themselves ("file:line: why"), the first MAX_NAMED_LINES of them
    skipped_lines: list[str] = field(default_factory=list)


def convert_compositions(
    source: str | Path,
    dest: str | Path,
    limits: CompositionLimits | None = None,
    skip_invalid: bool = False,
    row_group_rows: int = ROW_GROUP_ROWS,
) -> ConvertedCompositions:
    """Check ``source`` chunk by chunk and write the checked compositions to ``dest``.

    Errors and skips are those of crysray.sample.compositions.read_targets (one line naming
    file and line); only one chunk of ``row_group_rows`` compositions is in memory at a time.
    """
    digest, count, skipped, skipped_lines = hashlib.sha256(), 0, Counter(), []
    dest = Path(dest)
    with atomic_path(dest) as tmp, pq.ParquetWriter(tmp, SCHEMA) as writer:
        for chunk in checked_chunks(
            source, limits, skip_invalid, skipped, row_group_rows, skipped_lines
        ):
            table = compositions_table(chunk)
            update_digest(digest, table)
            writer.write_table(table, row_group_size=row_group_rows)
            count += len(chunk)
        if count == 0:
            raise ValueError(
                f"composition file {source} holds no usable formulas "
                f"({sum(skipped.values())} skipped)"
            )
        writer.add_key_value_metadata(
            {DIGEST_META: digest.hexdigest()[:16], COUNT_META: str(count)}
        )
    return ConvertedCompositions(dest, count, digest.hexdigest()[:16], skipped, skipped_lines)


def compositions_table(compositions: list[Composition]) -> pa.Table:
    lengths = np.fromiter(
        (len(c.atomic_numbers) for c in compositions), np.int32, len(compositions)
    )
    offsets = np.zeros(len(compositions) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    atoms = np.concatenate([c.atomic_numbers for c in compositions]).astype(np.int16)
    return pa.table(
        [
            pa.array([c.source_id for c in compositions], pa.string()),
            pa.ListArray.from_arrays(pa.array(offsets), pa.array(atoms)),
        ],
        schema=SCHEMA,
    )


def update_digest(digest, table: pa.Table, rows_per_part: int = 4096) -> None:
    """Feed ``table`` to ``digest`` a few thousand rows at a time: the index arrays of
    ``digest_bytes`` take ~30 bytes per byte hashed."""
    for first in range(0, table.num_rows, rows_per_part):
        digest.update(digest_bytes(table.slice(first, rows_per_part)))


def digest_bytes(table: pa.Table) -> bytes:
    """What CompositionTargets.digest hashes for these rows, ``id \\0 Z(int64) \\n`` each,
    built with numpy (a hash of the concatenation equals the hash of its parts in turn)."""
    ids = table.column("source_id").combine_chunks()
    atoms = table.column("atomic_numbers").combine_chunks()
    id_offsets = np.frombuffer(ids.buffers()[1], np.int32)[ids.offset : ids.offset + len(ids) + 1]
    id_bytes = np.frombuffer(ids.buffers()[2] or b"", np.uint8)[id_offsets[0] : id_offsets[-1]]
    id_lengths = np.diff(id_offsets)
    z_bytes = atoms.flatten().to_numpy().astype("<i8").view(np.uint8)
    z_lengths = 8 * np.asarray(atoms.value_lengths(), dtype=np.int64)
    record = id_lengths + z_lengths + 2
    starts = np.concatenate([[0], np.cumsum(record)[:-1]])
    out = np.empty(int(record.sum()), np.uint8)
    out[_spread(starts, id_lengths)] = id_bytes
    out[starts + id_lengths] = 0
    out[_spread(starts + id_lengths + 1, z_lengths)] = z_bytes
    out[starts + record - 1] = ord("\n")
    return out.tobytes()


def _spread(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Positions starts[i] + 0 .. lengths[i] - 1 for every i, concatenated."""
    total = int(lengths.sum())
    first = np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.repeat(starts, lengths) + np.arange(total) - first


def publish(local: StoredCompositions, run: Location) -> StoredCompositions:
    """Put a converted list into the run (unless an identical one is there already, as on a
    resume) and return the targets that read it there."""
    store = storage_of(run)
    if stored_digest(store) != local.digest():
        store.write_file(STORE_KEY, Path(local.location) / local.key)
    return StoredCompositions(store.location, local.count, local.digest())


def stored_digest(store: Storage) -> str | None:
    """The digest recorded in the run's compositions file; None if missing or unreadable (an
    upload cut short has no Parquet footer)."""
    if not store.exists(STORE_KEY):
        return None
    try:
        with store.fs.open_input_file(store.path(STORE_KEY)) as f:
            metadata = pq.ParquetFile(f).metadata.metadata or {}
    except (OSError, pa.ArrowException):
        return None
    return metadata.get(DIGEST_META, b"").decode() or None


class StoredCompositions(Targets):
    """CSP: sample k is composition k mod ``count`` of the run's ``compositions.parquet``.

    Pickles as (location, count, digest); the open file and the cached row groups stay with
    the process that read them.
    """

    kind = "compositions"

    def __init__(self, location: str, count: int, digest: str, key: str = STORE_KEY):
        self.location, self.count, self._digest, self.key = location, count, digest, key
        self._file: pq.ParquetFile | None = None
        self._group_starts: np.ndarray | None = None
        self._groups: OrderedDict[int, tuple[list[str], np.ndarray, np.ndarray]] = OrderedDict()

    def __getstate__(self) -> dict:
        return {"location": self.location, "count": self.count, "digest": self._digest,
                "key": self.key}  # fmt: skip

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["location"], state["count"], state["digest"], state["key"])

    def digest(self) -> str:
        return self._digest

    def for_unit(self, start: int, stop: int, seed: int, unit: int) -> list[Composition]:
        rows = np.arange(start, stop, dtype=np.int64) % self.count
        groups = np.searchsorted(self._starts(), rows, side="right") - 1
        out = []
        for row, group in zip(rows.tolist(), groups.tolist()):
            ids, offsets, atoms = self._group(group)
            i = row - int(self._group_starts[group])
            out.append(Composition(ids[i], atoms[offsets[i] : offsets[i + 1]].copy()))
        return out

    def known_compositions(self) -> Iterator[Composition]:
        """Every composition, read a row group at a time (an iterator, not a list: a list of
        tens of millions would not fit). What a caller keeps of them is up to it."""
        for group in range(len(self._starts())):
            ids, offsets, atoms = self._read_group(group)
            for i, source_id in enumerate(ids):
                yield Composition(source_id, atoms[offsets[i] : offsets[i + 1]].copy())

    def _starts(self) -> np.ndarray:
        """First row of each row group; opens the file and checks it is the one expected."""
        if self._group_starts is None:
            store = Storage(self.location)
            self._file = pq.ParquetFile(store.fs.open_input_file(store.path(self.key)))
            metadata = self._file.metadata.metadata or {}
            if (
                metadata.get(DIGEST_META, b"").decode() != self._digest
                or self._file.metadata.num_rows != self.count
            ):
                raise ValueError(f"{store.display(self.key)} is not this campaign's list")
            sizes = [
                self._file.metadata.row_group(g).num_rows for g in range(self._file.num_row_groups)
            ]
            self._group_starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        return self._group_starts

    def _group(self, group: int) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Row group ``group`` (ids, atom offsets, atoms), from the cache of the last two."""
        if group in self._groups:
            self._groups.move_to_end(group)
        else:
            self._groups[group] = self._read_group(group)
            if len(self._groups) > 2:
                self._groups.popitem(last=False)
        return self._groups[group]

    def _read_group(self, group: int) -> tuple[list[str], np.ndarray, np.ndarray]:
        self._starts()
        table = self._file.read_row_group(group)
        atoms = table.column("atomic_numbers").combine_chunks()
        offsets = np.asarray(atoms.offsets) - atoms.offsets[0].as_py()
        return (
            table.column("source_id").to_pylist(),
            offsets,
            atoms.flatten().to_numpy().astype(np.int64),
        )
