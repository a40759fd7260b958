"""crysray.data: CSV loading, skipping bad rows, Parquet cache, CrystalTable batching."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pymatgen.analysis.structure_matcher import StructureMatcher

import crysray.data.csv as csv_mod
from crysray.data.csv import dataset_path, load_split, process_csv
from crysray.data.dataset import CrystalTable
from crysray.structures import canonical_structure, parse_cif

TABLE_FIELDS = ("material_id", "num_atoms", "offsets", "atom_types", "frac_coords", "lattice")


def assert_tables_equal(a: CrystalTable, b: CrystalTable) -> None:
    for name in TABLE_FIELDS:
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype, name
        np.testing.assert_array_equal(x, y, err_msg=name)


@pytest.fixture(scope="module")
def val_rows() -> pd.DataFrame:
    """First 50 rows of Perov-5 val, all columns."""
    return pd.read_csv(dataset_path("perov_5", "val"), nrows=50)


@pytest.fixture(scope="module")
def val_csv(tmp_path_factory, val_rows) -> Path:
    path = tmp_path_factory.mktemp("data") / "val50.csv"
    val_rows.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def table(val_csv, tmp_path_factory) -> CrystalTable:
    return load_split(val_csv, cache_dir=tmp_path_factory.mktemp("cache"))


def _bad_rows(good: pd.DataFrame) -> pd.DataFrame:
    cif = good["cif"].iloc[0]
    bad = good.iloc[[0, 0, 0, 0, 0]].copy()
    bad["material_id"] = ["garbage", "empty", "zero_volume", "unknown_element", "missing"]
    bad["cif"] = [
        "data_broken\n_cell_length_a what\nloop_\n nonsense 1 2 3\n",
        "",
        cif.replace("_cell_length_a   4.27928426", "_cell_length_a   0.0"),
        cif.replace("Cu  Cu0", "Xx  Xx0"),
        np.nan,
    ]
    return bad


@pytest.fixture(scope="module")
def messy_frame(val_rows) -> pd.DataFrame:
    good = val_rows.iloc[:12]
    # Interleave so that skipping must keep the right material_id for every good row.
    return pd.concat([good.iloc[:5], _bad_rows(good), good.iloc[5:]], ignore_index=True)


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz"])
def test_bad_rows_are_skipped_and_counted(tmp_path, messy_frame, val_rows, suffix, caplog):
    path = tmp_path / f"messy{suffix}"
    messy_frame.to_csv(path, index=False)
    table, skipped = process_csv(path, workers=1)
    assert dict(skipped) == {
        "unparseable CIF": 1,
        "missing cif": 2,  # an empty string and a NaN cell
        "bad volume": 1,
        "unknown element": 1,
    }
    expected_ids = val_rows["material_id"].iloc[:12].astype(str).tolist()
    assert table.material_id.tolist() == expected_ids
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="crysray.data"):
        loaded = load_split(path, cache_dir=tmp_path / "cache")
    assert_tables_equal(loaded, table)
    lines = [r.getMessage() for r in caplog.records if r.name == "crysray.data"]
    assert len(lines) == 1 and "skipped 5 of 17 rows" in lines[0]


def test_good_rows_are_canonical_structures(table, val_rows):
    structures = table.structures([0, 7, 49])
    matcher = StructureMatcher()
    for s, cif in zip(structures, val_rows["cif"].iloc[[0, 7, 49]], strict=True):
        expected = canonical_structure(parse_cif(cif))
        assert matcher.fit(s, expected)
        np.testing.assert_allclose(s.lattice.matrix, expected.lattice.matrix, atol=1e-12)
    assert np.all((table.frac_coords >= 0) & (table.frac_coords < 1))


def test_pool_gives_the_same_table_as_one_process(val_csv, table, monkeypatch):
    monkeypatch.setattr(csv_mod, "CHUNK_ROWS", 8)  # 7 chunks over 2 worker processes
    pooled, skipped = process_csv(val_csv, workers=2)
    assert not skipped
    assert_tables_equal(pooled, table)


def test_empty_split_raises_readable_error(tmp_path, val_rows):
    path = tmp_path / "empty.csv"
    val_rows.iloc[:0].to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"empty\.csv: no usable crystals \(0 rows, 0 skipped\)"):
        load_split(path, cache_dir=tmp_path / "cache")
    all_bad = tmp_path / "all_bad.csv"
    _bad_rows(val_rows).iloc[:2].to_csv(all_bad, index=False)
    with pytest.raises(ValueError, match=r"no usable crystals \(2 rows, 2 skipped\)"):
        load_split(all_bad, cache_dir=tmp_path / "cache")


def test_unreadable_file_raises_value_error(tmp_path):
    path = tmp_path / "broken.csv.gz"
    path.write_bytes(b"this is not gzip data")
    with pytest.raises(ValueError, match=r"broken\.csv\.gz: unreadable CSV"):
        load_split(path, cache_dir=tmp_path / "cache")


def test_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        load_split(tmp_path / "nope.csv", cache_dir=tmp_path)


def test_second_load_reads_cache_only(tmp_path, val_csv, monkeypatch):
    cache_dir = tmp_path / "cache"
    first = load_split(val_csv, cache_dir=cache_dir, workers=2)
    files = list(cache_dir.glob("*.parquet"))
    assert len(files) == 1

    def must_not_run(cif):
        raise AssertionError("parsed again despite the cache")

    monkeypatch.setattr(csv_mod, "_process_row", must_not_run)
    second = load_split(val_csv, cache_dir=cache_dir, workers=2)
    assert_tables_equal(first, second)

    # A new processing version is a new key, so the parser runs again.
    monkeypatch.setattr(csv_mod, "PROCESSING_VERSION", "something-else")
    with pytest.raises(AssertionError, match="parsed again"):
        load_split(val_csv, cache_dir=cache_dir, workers=1)


def test_unreadable_cache_is_rebuilt(tmp_path, val_csv, table):
    cache_dir = tmp_path / "cache"
    load_split(val_csv, cache_dir=cache_dir)
    (cache_file,) = cache_dir.glob("*.parquet")
    cache_file.write_bytes(b"not parquet")
    assert_tables_equal(load_split(val_csv, cache_dir=cache_dir), table)
    assert CrystalTable.from_parquet(cache_file).material_id.shape == (50,)


def test_parquet_round_trip_and_schema(tmp_path, table):
    path = tmp_path / "t.parquet"
    table.to_parquet(path)
    schema = pq.read_schema(path)
    assert schema.field("material_id").type == pa.string()
    assert schema.field("atomic_numbers").type == pa.list_(pa.int16())
    assert schema.field("frac_coords").type == pa.list_(pa.float64())
    assert schema.field("lattice").type == pa.list_(pa.float64())
    assert_tables_equal(CrystalTable.from_parquet(path), table)


def test_batch_gathers_the_right_atoms(table):
    idx = [7, 0, 49, 7]
    batch = table.batch(idx)
    assert batch.num_atoms.tolist() == table.num_atoms[idx].tolist()
    comps = table.compositions()
    assert batch.atom_types.tolist() == np.concatenate([comps[i] for i in idx]).tolist()
    for b, i in enumerate(idx):
        lo, hi = table.offsets[i], table.offsets[i + 1]
        rows = batch.batch_idx == b
        frac = batch.frac_coords[rows].numpy()
        np.testing.assert_allclose(frac, table.frac_coords[lo:hi], atol=1e-6)
        np.testing.assert_allclose(batch.lattice[b].numpy(), table.lattice[i], atol=1e-5)
    sub = table.subset(idx)
    assert sub.material_id.tolist() == table.material_id[idx].tolist()
    np.testing.assert_array_equal(sub.batch(range(4)).frac_coords, batch.frac_coords)


def test_shards_are_disjoint_and_equal_length(table):
    sub = table.subset(range(49))  # odd size: one index of wrap-around padding
    kwargs = {"batch_size": 8, "shuffle": True, "seed": 3, "epoch": 1, "world_size": 2}
    shards = [sub.batch_indices(rank=r, **kwargs) for r in range(2)]
    assert [len(s) for s in shards] == [4, 4]
    seen = [np.concatenate(s) for s in shards]
    assert len(seen[0]) == len(seen[1]) == 25
    assert set(seen[0]) | set(seen[1]) == set(range(49))
    assert len(set(seen[0]) & set(seen[1])) == 1
    batches = [list(sub.iterate_batches(rank=r, **kwargs)) for r in range(2)]
    assert [len(b) for b in batches] == [4, 4]
    assert [b.num_crystals for b in batches[0]] == [8, 8, 8, 1]
    dropped = [sub.batch_indices(rank=r, drop_last=True, **kwargs) for r in range(2)]
    assert [len(d) for d in dropped] == [3, 3]


def test_shuffle_depends_only_on_seed_and_epoch(table):
    def order(**kw):
        return np.concatenate(table.batch_indices(10, **kw)).tolist()

    assert order(shuffle=True, seed=1, epoch=2) == order(shuffle=True, seed=1, epoch=2)
    assert order(shuffle=True, seed=1, epoch=2) != order(shuffle=True, seed=1, epoch=3)
    assert sorted(order(shuffle=True, seed=1, epoch=2)) == list(range(50))
    assert order(shuffle=False) == list(range(50))
    with pytest.raises(ValueError):
        table.batch_indices(10, shuffle=False, rank=2, world_size=2)


def test_lattice_std_and_compositions(table, val_rows):
    matrices = np.stack([s.lattice.matrix for s in table.structures()])
    assert table.lattice_std() == pytest.approx(float(matrices.std()), rel=1e-12)
    comps = table.compositions()
    assert len(comps) == len(table) == 50
    assert sorted(comps[3].tolist()) == sorted(parse_cif(val_rows["cif"].iloc[3]).atomic_numbers)


def test_dataset_path(tmp_path, monkeypatch):
    assert dataset_path("perov_5", "train").name == "train.csv.gz"
    assert dataset_path("perov_5", "val").name == "val.csv"
    with pytest.raises(FileNotFoundError, match="carbon_24"):
        dataset_path("carbon_24", "train")
    (tmp_path / "toy").mkdir()
    (tmp_path / "toy" / "test.csv").write_text("material_id,cif\n")
    monkeypatch.setenv("CRYSRAY_DATA_DIR", str(tmp_path))
    assert dataset_path("toy", "test") == tmp_path / "toy" / "test.csv"
    assert dataset_path("toy", "test", data_dir=tmp_path) == tmp_path / "toy" / "test.csv"
    with pytest.raises(FileNotFoundError, match="toy"):
        dataset_path("toy", "train", data_dir=tmp_path)
