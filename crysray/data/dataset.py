"""CrystalTable: a split held as flat numpy arrays, gathered into CrystalBatch on demand.

Atoms of all crystals are concatenated; crystal ``b`` owns atoms ``offsets[b]:offsets[b+1]``.
Units follow crysray.types: lattice rows are lattice vectors in Angstrom, frac coords in
[0, 1), atom types are atomic numbers Z. pymatgen is imported only by ``structures()``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from crysray.types import CrystalBatch

PARQUET_SCHEMA = pa.schema(
    [
        ("material_id", pa.string()),
        ("num_atoms", pa.int64()),
        ("atomic_numbers", pa.list_(pa.int16())),
        ("frac_coords", pa.list_(pa.float64())),  # n * 3, row-major
        ("lattice", pa.list_(pa.float64())),  # 9, rows are lattice vectors
    ]
)


@dataclass(frozen=True, eq=False)
class CrystalTable:
    material_id: np.ndarray  # (B,) object, str
    num_atoms: np.ndarray  # (B,) int64
    offsets: np.ndarray  # (B + 1,) int64, offsets[0] == 0, offsets[-1] == N
    atom_types: np.ndarray  # (N,) int64, atomic numbers Z
    frac_coords: np.ndarray  # (N, 3) float64, in [0, 1)
    lattice: np.ndarray  # (B, 3, 3) float64, rows are lattice vectors, Angstrom

    def __post_init__(self) -> None:
        b, n = len(self.num_atoms), len(self.atom_types)
        ok = (
            self.material_id.shape == (b,)
            and self.offsets.shape == (b + 1,)
            and self.frac_coords.shape == (n, 3)
            and self.lattice.shape == (b, 3, 3)
            and int(self.offsets[-1]) == n
        )
        if not ok:
            raise ValueError("CrystalTable arrays have inconsistent shapes")

    @classmethod
    def from_arrays(
        cls,
        material_id: Sequence[str],
        lattices: Sequence[np.ndarray],
        fracs: Sequence[np.ndarray],
        types: Sequence[np.ndarray],
    ) -> CrystalTable:
        """Build from per-crystal arrays: lattice (3, 3), frac (n_b, 3), Z (n_b,)."""
        num_atoms = np.array([len(z) for z in types], dtype=np.int64)
        return cls(
            material_id=np.array([str(m) for m in material_id], dtype=object),
            num_atoms=num_atoms,
            offsets=_offsets(num_atoms),
            atom_types=np.concatenate([*types, np.zeros(0)]).astype(np.int64),
            frac_coords=np.concatenate([*fracs, np.zeros((0, 3))]).astype(np.float64),
            lattice=np.array(lattices, dtype=np.float64).reshape(-1, 3, 3),
        )

    def __len__(self) -> int:
        return len(self.num_atoms)

    def _atom_index(self, idx: np.ndarray) -> np.ndarray:
        """(sum num_atoms[idx],) indices of the atoms of crystals ``idx``, in order."""
        counts = self.num_atoms[idx]
        local_starts = np.repeat(np.cumsum(counts) - counts, counts)
        return np.arange(counts.sum()) - local_starts + np.repeat(self.offsets[idx], counts)

    def batch(self, indices: Sequence[int] | np.ndarray) -> CrystalBatch:
        """Gather crystals ``indices`` into a CrystalBatch (float32 / long tensors)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        atoms = self._atom_index(idx)
        return CrystalBatch(
            frac_coords=torch.from_numpy(self.frac_coords[atoms]).float(),
            lattice=torch.from_numpy(self.lattice[idx]).float(),
            atom_types=torch.from_numpy(self.atom_types[atoms]),
            num_atoms=torch.from_numpy(self.num_atoms[idx]),
        )

    def subset(self, indices: Sequence[int] | np.ndarray) -> CrystalTable:
        """A new table with crystals ``indices`` in that order."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        atoms = self._atom_index(idx)
        num_atoms = self.num_atoms[idx]
        return CrystalTable(
            material_id=self.material_id[idx],
            num_atoms=num_atoms,
            offsets=_offsets(num_atoms),
            atom_types=self.atom_types[atoms],
            frac_coords=self.frac_coords[atoms],
            lattice=self.lattice[idx],
        )

    def batch_indices(
        self,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        epoch: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
    ) -> list[np.ndarray]:
        """Crystal indices of this rank's batches, as used by ``iterate_batches``."""
        if not 0 <= rank < world_size or batch_size < 1:
            raise ValueError(f"bad rank/world_size/batch_size: {rank}/{world_size}/{batch_size}")
        n = len(self)
        order = np.arange(n)
        if shuffle:
            # Every rank derives the same permutation from (seed, epoch) alone.
            order = np.random.default_rng([seed, epoch]).permutation(n)
        # Wrap-around padding (as torch's DistributedSampler) so every shard has equal length
        # and all DDP ranks run the same number of steps.
        per_rank = math.ceil(n / world_size)
        shard = np.resize(order, per_rank * world_size)[rank::world_size]
        stop = per_rank - per_rank % batch_size if drop_last else per_rank
        return [shard[start : start + batch_size] for start in range(0, stop, batch_size)]

    def iterate_batches(
        self,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        epoch: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
    ) -> Iterator[CrystalBatch]:
        """Batches of this rank's shard of the split.

        The permutation depends only on (seed, epoch). Rank ``r`` takes positions
        ``r, r + world_size, ...`` of the permutation padded by wrap-around to a multiple of
        world_size, so shards are disjoint apart from the padding and equal in length, and
        every rank yields the same number of batches.
        """
        batches = self.batch_indices(
            batch_size,
            shuffle=shuffle,
            seed=seed,
            epoch=epoch,
            rank=rank,
            world_size=world_size,
            drop_last=drop_last,
        )
        return (self.batch(idx) for idx in batches)

    def lattice_std(self) -> float:
        """Pooled population std of all 9 entries of all lattice matrices (Angstrom).

        The lattice scale s of docs/methods.md C1 (Perov-5 train: 1.9612).
        """
        return float(self.lattice.std())

    def compositions(self) -> list[np.ndarray]:
        """Atomic numbers (n_b,) of every crystal, in table order."""
        return np.split(self.atom_types, self.offsets[1:-1])

    def structures(self, indices: Sequence[int] | np.ndarray | None = None) -> list:
        """pymatgen Structures of crystals ``indices`` (all crystals if None)."""
        from crysray.structures import arrays_to_structure  # keep pymatgen off the hot path

        idx = np.arange(len(self)) if indices is None else np.asarray(indices, dtype=np.int64)
        return [
            arrays_to_structure(
                self.lattice[b],
                self.frac_coords[self.offsets[b] : self.offsets[b + 1]],
                self.atom_types[self.offsets[b] : self.offsets[b + 1]],
            )
            for b in idx.reshape(-1)
        ]

    def to_parquet(self, path: str | Path, extra: dict[str, pa.Array] | None = None) -> None:
        """Write one row per crystal with PARQUET_SCHEMA (plus ``extra`` per-crystal columns,
        e.g. DFT energies, which ``from_parquet`` ignores)."""
        b = len(self)
        columns = [
            pa.array(self.material_id.tolist(), type=pa.string()),
            pa.array(self.num_atoms, type=pa.int64()),
            _list_column(self.offsets, self.atom_types.astype(np.int16), pa.int16()),
            _list_column(3 * self.offsets, self.frac_coords.reshape(-1), pa.float64()),
            _list_column(9 * np.arange(b + 1), self.lattice.reshape(-1), pa.float64()),
        ]
        table = pa.Table.from_arrays(columns, schema=PARQUET_SCHEMA)
        for name, values in (extra or {}).items():
            table = table.append_column(name, values)
        pq.write_table(table, str(path))

    @classmethod
    def from_parquet(cls, path: str | Path) -> CrystalTable:
        """Read a file written by ``to_parquet``."""
        table = pq.read_table(str(path), columns=PARQUET_SCHEMA.names).cast(PARQUET_SCHEMA)
        num_atoms = table["num_atoms"].to_numpy().astype(np.int64)
        return cls(
            material_id=table["material_id"].to_numpy().astype(object),
            num_atoms=num_atoms,
            offsets=_offsets(num_atoms),
            atom_types=_list_values(table["atomic_numbers"]).astype(np.int64),
            frac_coords=_list_values(table["frac_coords"]).astype(np.float64).reshape(-1, 3),
            lattice=_list_values(table["lattice"]).astype(np.float64).reshape(-1, 3, 3),
        )


def _offsets(num_atoms: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(num_atoms)]).astype(np.int64)


def _list_column(offsets: np.ndarray, values: np.ndarray, value_type: pa.DataType) -> pa.Array:
    return pa.ListArray.from_arrays(
        pa.array(np.asarray(offsets, dtype=np.int32)), pa.array(values, type=value_type)
    )


def _list_values(column: pa.ChunkedArray) -> np.ndarray:
    # flatten() honours slicing of each chunk, unlike .values
    if column.num_chunks == 0:
        return np.zeros(0)
    chunks = [chunk.flatten().to_numpy(zero_copy_only=False) for chunk in column.chunks]
    return np.concatenate(chunks)
