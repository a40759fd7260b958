"""The Parquet composition store: same digest and rows as the in-memory targets, same checks,
memory that does not grow with the list."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from support import REPO

from crysray.data.csv import dataset_path
from crysray.sample.composition_store import (
    STORE_KEY,
    StoredCompositions,
    convert_compositions,
    publish,
)
from crysray.sample.compositions import CompositionLimits, read_targets
from crysray.sample.targets import CompositionTargets

FORMULAS = "# oxides\nSrTiO3\nBaTiO3, my-bto\n\nCa2Ti2O6\nNaCl\nLi7La3Zr2O12\nH2O,water\nFe2O3\n"


def stored(source, directory, row_group_rows=3, **checks) -> StoredCompositions:
    converted = convert_compositions(source, directory / STORE_KEY, row_group_rows=row_group_rows,
                                     **checks)  # fmt: skip
    return StoredCompositions(str(directory), converted.count, converted.digest)


def same(a, b) -> bool:
    return len(a) == len(b) and all(
        x.source_id == y.source_id
        and x.atomic_numbers.dtype == y.atomic_numbers.dtype
        and np.array_equal(x.atomic_numbers, y.atomic_numbers)
        for x, y in zip(a, b)
    )


@pytest.fixture
def formulas(tmp_path):
    path = tmp_path / "formulas.txt"
    path.write_text(FORMULAS)
    return path


def test_digest_equals_the_in_memory_digest_so_old_runs_resume(formulas, tmp_path):
    assert (
        stored(formulas, tmp_path).digest()
        == CompositionTargets(read_targets(formulas)[0]).digest()
    )
    # the default targets (Perov-5 test split, a CSV), in row groups that do not divide it
    split = dataset_path("perov_5", "test")
    (tmp_path / "split").mkdir()
    targets = stored(split, tmp_path / "split", row_group_rows=1000)
    assert targets.count == 3785
    assert targets.digest() == CompositionTargets(read_targets(split)[0]).digest()


@pytest.mark.parametrize("start, stop", [(0, 7), (2, 9), (5, 12), (6, 30), (17, 18), (40, 41)])
def test_for_unit_rows_equal_the_in_memory_rows(formulas, tmp_path, start, stop):
    """7 compositions in row groups of 3: ranges that cross groups and wrap around (often)."""
    reference = CompositionTargets(read_targets(formulas)[0])
    targets = pickle.loads(pickle.dumps(stored(formulas, tmp_path)))  # as an actor gets it
    assert same(targets.for_unit(start, stop, 0, 0), reference.for_unit(start, stop, 0, 0))
    assert same(list(targets.known_compositions()), reference.known_compositions())


def test_actors_get_a_few_bytes_and_read_only_the_row_groups_they_need(formulas, tmp_path):
    targets = stored(formulas, tmp_path, row_group_rows=2)
    assert len(pickle.dumps(targets)) < 300
    reader = pickle.loads(pickle.dumps(targets))
    reader.for_unit(7 * 5 + 2, 7 * 5 + 4, 0, 0)  # rows 2, 3: one row group, after wrapping
    assert list(reader._groups) == [1]
    reader.for_unit(5, 7, 0, 0)  # rows 5, 6: the last two groups; only two are kept
    assert list(reader._groups) == [2, 3]


def test_parquet_input_by_formula_or_atomic_numbers(formulas, tmp_path):
    reference = CompositionTargets(read_targets(formulas)[0])
    ids = [c.source_id for c in reference.compositions]
    by_formula = tmp_path / "by_formula.parquet"
    pq.write_table(pa.table({"formula": ["SrTiO3", "BaTiO3", "Ca2Ti2O6", "NaCl", "Li7La3Zr2O12",
                                         "H2O", "Fe2O3"], "id": ids}), by_formula)  # fmt: skip
    by_numbers = tmp_path / "by_numbers.parquet"
    atoms = [c.atomic_numbers.tolist() for c in reference.compositions]
    pq.write_table(pa.table({"atomic_numbers": atoms, "id": ids}), by_numbers)
    for name, path in (("a", by_formula), ("b", by_numbers)):
        (tmp_path / name).mkdir()
        targets = stored(path, tmp_path / name)
        assert targets.digest() == reference.digest()
        assert same(targets.for_unit(0, 10, 0, 0), reference.for_unit(0, 10, 0, 0))
    # without ids, a formula names itself
    pq.write_table(pa.table({"atomic_numbers": [[38, 22, 8, 8, 8]]}), tmp_path / "bare.parquet")
    assert read_targets(tmp_path / "bare.parquet")[0][0].source_id == "SrTiO3"


@pytest.mark.parametrize(
    "text, message",
    [
        ("SrTiO3\nXx2O3\nNaCl\n", "bad.txt:2: unknown element 'Xx' in 'Xx2O3'"),
        ("SrTiO3\nFe1000O1500\n", "bad.txt:2: 2500 atoms per cell, above the limit of 200"),
        ("SrTiO3\nnot a formula!\n", "bad.txt:2: not a chemical formula: 'not a formula!'"),
        ("NaCl\nU2O3\n", "bad.txt:2: element Z=92 is beyond the model's Z <= 83"),
    ],
)
def test_checks_fail_with_the_same_line_as_before(tmp_path, text, message):
    bad = tmp_path / "bad.txt"
    bad.write_text(text)
    limits = CompositionLimits(200, 83)
    with pytest.raises(ValueError) as before:
        read_targets(bad, limits)
    with pytest.raises(ValueError) as now:
        convert_compositions(bad, tmp_path / STORE_KEY, limits)
    assert str(now.value) == str(before.value)
    assert message in str(now.value)
    assert not (tmp_path / STORE_KEY).exists()


def test_skips_are_counted_as_before_across_chunks(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("SrTiO3\nXx2O3\nFe1000O1500\nNaCl\nQq\nKCl\n" * 3)
    limits = CompositionLimits(200, 83)
    kept, skipped = read_targets(bad, limits, skip_invalid=True)
    converted = convert_compositions(bad, tmp_path / STORE_KEY, limits, True, row_group_rows=2)
    assert converted.skipped == skipped and sum(skipped.values()) == 9
    reasons = ["unknown element 'Xx' in 'Xx2O3'", "unknown element 'Qq' in 'Qq'",
               "2500 atoms per cell, above the limit of 200"]  # fmt: skip
    assert skipped == Counter(dict.fromkeys(reasons, 3))
    assert converted.digest == CompositionTargets(kept).digest() and converted.count == 9
    only_bad = tmp_path / "only_bad.txt"
    only_bad.write_text("Xx2O3\n")
    with pytest.raises(ValueError, match="holds no usable formulas"):
        convert_compositions(only_bad, tmp_path / "none.parquet", limits, True)


def test_publish_copies_once_and_replaces_a_truncated_file(formulas, tmp_path):
    (tmp_path / "scratch").mkdir()
    local = stored(formulas, tmp_path / "scratch")
    run = tmp_path / "run"
    targets = publish(local, run)
    assert targets.location == str(run) and targets.digest() == local.digest()
    assert (run / STORE_KEY).read_bytes() == (tmp_path / "scratch" / STORE_KEY).read_bytes()
    before = (run / STORE_KEY).stat().st_mtime_ns
    publish(local, run)  # a resume: the same list is there already
    assert (run / STORE_KEY).stat().st_mtime_ns == before
    (run / STORE_KEY).write_bytes((run / STORE_KEY).read_bytes()[:100])  # an upload cut short
    publish(local, run)
    assert same(targets.for_unit(0, 7, 0, 0), local.for_unit(0, 7, 0, 0))
    stale = StoredCompositions(str(run), local.count, "0" * 16)
    with pytest.raises(ValueError, match="is not this campaign's list"):
        stale.for_unit(0, 1, 0, 0)


@pytest.mark.slow
def test_driver_and_reader_memory_do_not_grow_with_the_list(tmp_path):
    """1M formulas vs 50k (benchmarks/bench_composition_store.py: 10M vs 100k)."""
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_composition_store.py"), "--sizes",
         "50000", "1000000", "--no-record"],
        capture_output=True, text=True, timeout=900, check=True,
    )  # fmt: skip
    small, big = (json.loads(line) for line in result.stdout.splitlines())
    assert big["compositions"] == 20 * small["compositions"]
    # memory in proportion to the list would grow the driver by 20x its small-run growth
    # (about 1.5 GB); the allocator settles after a few chunks, so allow a bounded step
    assert big["driver_growth_mb"] < 4 * small["driver_growth_mb"]
    assert big["driver_peak_rss_mb"] < small["driver_peak_rss_mb"] + 150
    # an actor holding the list would need ~340 MB more at 1M (a Python object, a string and
    # an array per formula); what it holds is two cached row groups, plus the pages Arrow's
    # allocator keeps after reading 200 of them (60-90 MB more than at 50k, varying from run to
    # run; at 50k there is one group and nothing is re-read)
    assert big["reader_peak_rss_mb"] < small["reader_peak_rss_mb"] + 150
    # what an actor receives: the same few bytes, whatever the list's length (the count's
    # digits aside)
    assert big["shipped_bytes"] < 300 and abs(big["shipped_bytes"] - small["shipped_bytes"]) < 8
