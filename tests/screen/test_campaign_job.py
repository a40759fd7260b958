"""jobs/campaign.py end to end on real Ray, the shipped Materials Project model and MatGL:
per-system outputs, counts that add up, resume, refusal of other settings."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow.dataset as ds
import pytest

from crysray.data.csv import dataset_path


@pytest.fixture(scope="module")
def known_csv(tmp_path_factory, shared_data):
    """A small set of known materials (the campaign's default loads every MP-derived split)."""
    path = tmp_path_factory.mktemp("known") / "known.csv"
    pd.read_csv(dataset_path("mp_20_pilot", "train"), nrows=40).to_csv(path, index=False)
    return path


@pytest.mark.slow
@pytest.mark.needs_shared
def test_campaign_ranks_candidates_per_system_writes_dft_inputs_and_resumes(tmp_path, job,
                                                                           known_csv):  # fmt: skip
    out = tmp_path / "screen"
    exclude = tmp_path / "exclude.csv"
    exclude.write_text("mp-22862,NaCl\n")
    args = ["--chemsys", "Na-Cl", "K-Cl", "--max-atoms", 4, "--samples-per-composition", 4,
            "--prerelax-steps", 5, "--prerelax-keep", 2, "--relax-steps", 150,
            "--top-candidates", 2, "--known", known_csv, "--hull-exclude", exclude,
            "--funnel-replicas", 2, "--out", out]  # fmt: skip
    first = job("campaign.py", *args)
    assert first.returncode == 0, first.stderr[-3000:]

    manifest = json.loads((out / "manifest.json").read_text())
    systems = manifest["campaign"]["systems"]
    assert set(systems) == {"Cl-Na", "Cl-K"}
    cells = sum(s["cells"] for s in systems.values())
    assert manifest["num_samples"] == 4 * cells
    summary = json.loads((out / "summary.json").read_text())
    assert summary["samples"] == 4 * cells
    tiers = summary["tiers"]
    assert sum(tiers["removed"].values()) == summary["samples"]  # every sample accounted for
    assert tiers["full_relaxations"] <= 2 * len(
        {r for r in ds.dataset(out / "data").to_table(columns=["formula"])["formula"].to_pylist()}
    )  # at most --prerelax-keep per formula
    assert summary["hull"]["excluded_materials"] == ["mp-22862"]

    screened = ds.dataset(sorted((out / "screen").glob("unit-*.parquet"))).to_table()
    assert screened.num_rows == summary["samples"]
    for system in ("Cl-Na", "Cl-K"):
        folder = out / "systems" / system
        ranked = pd.read_parquet(folder / "candidates.parquet")
        assert len(ranked) == summary["systems"][system]["candidates"] > 0
        assert list(ranked["rank"]) == list(range(1, len(ranked) + 1))
        e_hull = ranked["e_above_hull"].dropna().tolist()
        assert e_hull == sorted(e_hull)
        assert set(ranked["tier"]) == {"candidate"}
        assert (ranked["relax_status"] == "converged").all()
        assert ranked["relaxed_lattice"].map(len).eq(9).all()
        assert (folder / "hull.png").stat().st_size > 1000
        novel = ranked[ranked["novel"]]
        cifs = sorted((folder / "cif").glob("*.cif")) if (folder / "cif").exists() else []
        assert len(cifs) == min(2, len(novel))
        for cif, sample in zip(cifs, novel["sample_id"]):
            assert cif.name.startswith(sample)
        if len(novel):
            dft = sorted(p for p in (folder / "dft").iterdir() if p.is_dir())
            assert {"INCAR", "KPOINTS", "POSCAR", "POTCAR.spec"} <= {
                p.name for p in dft[0].iterdir()
            }
    report = (out / "report.md").read_text()
    assert "## Cl-Na" in report and "![Cl-Na hull](systems/Cl-Na/hull.png)" in report

    before = {p: p.stat().st_mtime_ns for p in (out / "screen").glob("unit-*.parquet")}
    again = job("campaign.py", *args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in (out / "screen").glob("unit-*.parquet")} == before
    assert json.loads((out / "summary.json").read_text())["tiers"] == tiers

    other = job("campaign.py", *[a if a != 2 else 3 for a in args])
    assert other.returncode == 2 and "other settings" in other.stderr


@pytest.mark.slow
@pytest.mark.needs_shared
def test_a_campaign_writes_to_object_storage(job, s3_bucket, known_csv):
    from s3_server import DUMMY_KEYS

    from crysray.storage import Storage

    url = s3_bucket.url("screen")
    result = job("campaign.py", "--chemsys", "Na-Cl", "--max-atoms", 2,
                 "--samples-per-composition", 2, "--prerelax-steps", 3, "--relax-steps", 100,
                 "--known", known_csv, "--out", url)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    keys = set(s3_bucket.objects("screen"))
    for key in ("manifest.json", "summary.json", "report.md", "systems/Cl-Na/candidates.parquet",
                "systems/Cl-Na/hull.png"):  # fmt: skip
        assert f"screen/{key}" in keys
    store = Storage(url)
    assert json.loads(store.read_text("summary.json"))["samples"] == 2
    for key in keys:
        data = store.read_bytes(key.removeprefix("screen/"))
        assert not any(secret.encode() in data for secret in DUMMY_KEYS.values()), key


@pytest.mark.slow
@pytest.mark.needs_shared
def test_a_campaign_on_the_materials_project_hull_fetches_once(job, tmp_path, monkeypatch,
                                                               known_csv):  # fmt: skip
    """--hull mp through the real mp-api client against the test's MP server on 127.0.0.1:
    the driver fetches the systems once into the cache; a second campaign on the same systems
    sends no request; the key is never written."""
    from mp_server import KEY, materials_from_rows, mp20_rows, serving, thermo_docs
    from pymatgen.core import Composition

    rows = mp20_rows()
    elements = {"Na", "K", "Cl"}
    mine = rows[[set(Composition(f).as_dict()) <= elements for f in rows["pretty_formula"]]]
    docs = thermo_docs(materials_from_rows(mine))
    args = ["--chemsys", "Na-Cl", "K-Cl", "--max-atoms", 2, "--samples-per-composition", 2,
            "--prerelax-steps", 3, "--relax-steps", 100, "--hull", "mp",
            "--known", known_csv]  # fmt: skip
    with serving(monkeypatch, thermo=docs) as server:
        first = job("campaign.py", *args, "--out", tmp_path / "first")
        assert first.returncode == 0, first.stderr[-3000:]
        fetched = len(server.data_requests())
        assert fetched > 0
        second = job("campaign.py", *args, "--out", tmp_path / "second")
        assert second.returncode == 0, second.stderr[-3000:]
        assert len(server.data_requests()) == fetched  # the cache answered
    for run in ("first", "second"):
        summary = json.loads((tmp_path / run / "summary.json").read_text())
        assert summary["hull"]["name"] == "mp"
        for system in ("Cl-Na", "Cl-K"):
            ranked = pd.read_parquet(tmp_path / run / "systems" / system / "candidates.parquet")
            assert (ranked["hull_reference"] == "mp").all()
            assert ranked["e_above_hull"].notna().all()
        assert (ranked["hull_reference_phases"] >= 1).all()  # KCl is served
    manifest = json.loads((tmp_path / "first" / "manifest.json").read_text())
    assert manifest["campaign"]["hull"]["fetched"] > 0
    second_manifest = json.loads((tmp_path / "second" / "manifest.json").read_text())
    assert second_manifest["campaign"]["hull"]["fetched"] == 0
    written = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    assert KEY.encode() not in written
