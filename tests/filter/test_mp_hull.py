"""The ``mp`` hull through the real mp-api client, against an MP server on 127.0.0.1."""

from __future__ import annotations

import logging

import pytest
from mp_server import KEY, materials_from_rows, mp20_rows, serving, thermo_docs
from pymatgen.core import Composition

from crysray.filter.mp_hull import MissingReference, MPHull
from crysray.mp import MPError

SYSTEM = frozenset({"Li", "Mn", "O"})
OTHER = frozenset({"Fe", "P", "O"})


@pytest.fixture(scope="module")
def docs():
    frame = mp20_rows()
    elements = SYSTEM | OTHER
    keep = [set(Composition(f).as_dict()) <= elements for f in frame["pretty_formula"]]
    good = thermo_docs(materials_from_rows(frame[keep]))
    malformed = {"material_id": "mp-broken", "chemsys": "Li-O", "entries": {"GGA": {"energy": 1}}}
    return good + [malformed]


@pytest.fixture
def server(docs, monkeypatch):
    with serving(monkeypatch, key=None, thermo=docs) as server:
        yield server


def test_cached_hull_reproduces_the_servers_e_above_hull_and_hits_skip_the_network(
    server, tmp_path, caplog
):
    hull = MPHull(tmp_path)
    with caplog.at_level(logging.DEBUG):
        counts = hull.prepare([SYSTEM, OTHER], KEY)
    assert counts["systems"] == 7 + 7 - 1  # subsystems of both, O shared
    assert counts["fetched"] == counts["systems"] and counts["skipped_records"] == 1
    checked = 0
    for chemsys in (SYSTEM, OTHER, frozenset({"Mn", "O"})):
        for row in hull.cached_rows(chemsys):
            point = hull.e_above_hull(Composition(row["composition"]), row["energy"])
            assert point.e_above_hull == pytest.approx(row["energy_above_hull"], abs=1e-3)
            assert point.phases >= 1
            checked += 1
    assert checked >= 10
    # the served corrections are applied: energy = uncorrected + adjustment (-0.05 eV/atom)
    row = hull.cached_rows(SYSTEM)[0]
    n = Composition(row["composition"]).num_atoms
    assert row["energy"] - row["uncorrected_energy"] == pytest.approx(-0.05 * n)

    before = len(server.data_requests())
    again = MPHull(tmp_path).prepare([SYSTEM, frozenset({"Li", "O"})], KEY)
    assert again["fetched"] == 0 and len(server.data_requests()) == before  # cache hit: no traffic
    written = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    assert KEY.encode() not in written and KEY not in caplog.text


def test_a_503_is_retried_with_back_off(server, tmp_path):
    server.fail_next["/materials/thermo/"] = [503, 503]
    counts = MPHull(tmp_path).prepare([SYSTEM], KEY)
    assert counts["fetched"] == 7
    assert [p for p, _ in server.data_requests()].count("/materials/thermo/") == 3


def test_a_rejected_key_is_one_line_without_the_key(server, tmp_path):
    wrong = "0123456789abcdef0123456789abcdef"
    with pytest.raises(MPError) as err:
        MPHull(tmp_path).prepare([SYSTEM], wrong)
    message = str(err.value)
    assert "401" in message and "\n" not in message and wrong not in message
    assert not list(tmp_path.rglob("*.parquet"))


def test_no_key_and_offline_say_what_is_missing(server, tmp_path):
    with pytest.raises(MPError, match="MP_API_KEY"):
        MPHull(tmp_path).prepare([SYSTEM])
    with pytest.raises(MissingReference, match="Li-Mn-O"):
        MPHull(tmp_path).prepare([SYSTEM], KEY, offline=True)
    assert not server.data_requests()
    with pytest.raises(MissingReference, match="--offline"):
        MPHull(tmp_path).e_above_hull(Composition("LiMnO2"), -50.0)


def test_an_unreachable_server_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("CRYSRAY_MP_ENDPOINT", "http://127.0.0.1:9/")
    monkeypatch.setenv("CRYSRAY_MP_BACKOFF", "0.01")
    with pytest.raises(MPError, match="cannot reach") as err:
        MPHull(tmp_path).prepare([SYSTEM], KEY)
    assert "\n" not in str(err.value) and KEY not in str(err.value)
