"""``crysray data mp`` through the real mp-api client against a server on 127.0.0.1."""

from __future__ import annotations

import json

import numpy as np
import pytest
from mp_server import KEY, mp20_rows, serving, summary_docs

from crysray.commands import main
from crysray.data.csv import load_split
from crysray.data.mp import MPQuery, build_mp_dataset, split_of


@pytest.fixture(scope="module")
def docs():
    good = summary_docs(mp20_rows(400))
    broken = {**good[0], "material_id": "mp-broken", "structure": None}
    return good + [broken]


@pytest.fixture
def server(docs, monkeypatch):
    with serving(monkeypatch, summary=docs) as server:
        yield server


def test_dataset_from_a_paginated_query_is_split_by_id_and_cached(server, docs, tmp_path):
    query = MPQuery(max_sites=20, max_e_above_hull=0.08, experimental_only=True)
    summary = build_mp_dataset(query, tmp_path / "a", cache_dir=tmp_path / "cache", page_size=60,
                               workers=1)  # fmt: skip
    expected = [d for d in docs[:-1] if not d["theoretical"]]  # every 3rd doc is theoretical
    pages = [p for p, _ in server.data_requests()]
    assert len(pages) == -(-(len(expected)) // 60)  # paginated, every page fetched once
    assert summary["materials"] == len(expected) and summary["skipped_records"] == 0
    tables = {s: load_split(tmp_path / "a" / f"{s}.parquet") for s in ("train", "val", "test")}
    ids = {s: set(t.material_id) for s, t in tables.items()}
    assert sum(map(len, ids.values())) == len(expected) and not ids["train"] & ids["test"]
    assert all(split_of(m) == s for s, members in ids.items() for m in members)
    assert 0.45 < len(ids["train"]) / len(expected) < 0.75
    frac = np.concatenate([t.frac_coords for t in tables.values()])
    assert frac.min() >= 0 and frac.max() < 1  # canonical form, as the CSV splits

    before = len(server.data_requests())
    again = build_mp_dataset(query, tmp_path / "b", cache_dir=tmp_path / "cache", workers=1)
    assert len(server.data_requests()) == before  # the cached answer: no network
    assert again["splits"] == summary["splits"]
    written = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    assert KEY.encode() not in written


def test_a_malformed_record_is_skipped_and_counted(server, tmp_path):
    summary = build_mp_dataset(MPQuery(max_sites=20), tmp_path / "a", cache_dir=tmp_path, workers=1)
    assert summary["skipped_records"] + sum(summary["skipped_structures"].values()) == 1
    assert summary["materials"] == 400


def test_command_line_errors_are_one_line(server, tmp_path, capsys, monkeypatch):
    out = tmp_path / "a"
    assert main(["data", "mp", "--preset", "mp20-like", "--out", str(out),
                 "--cache-dir", str(tmp_path / "c"), "--workers", "1"]) == 0  # fmt: skip
    summary = json.loads(capsys.readouterr().out)
    assert summary["criteria"]["energy_above_hull"] == [0.0, 0.08]
    assert main(["data", "mp", "--preset", "mp20-like", "--out", str(out)]) == 2  # never overwrite
    assert "already holds a dataset" in capsys.readouterr().err
    assert main(["data", "mp", "--max-sites", "8", "--out", str(tmp_path / "b"), "--offline",
                 "--cache-dir", str(tmp_path / "c")]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert err.startswith("crysray data: error: no cached") and "\n" not in err
    monkeypatch.setenv("MP_API_KEY", "0123456789abcdef0123456789abcdef")
    assert main(["data", "mp", "--max-sites", "8", "--out", str(tmp_path / "b"),
                 "--cache-dir", str(tmp_path / "c")]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert "rejected the API key" in err and "0123456789abcdef" not in err and "\n" not in err
    assert not (tmp_path / "b").exists()
