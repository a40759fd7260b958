"""A small Materials Project API server on 127.0.0.1 for tests of the real mp-api client.

It answers the endpoints crysray uses (``/heartbeat``, ``/materials/thermo/``,
``/materials/summary/``) with the same JSON shapes, filters, ``_fields`` projection and
``_skip``/``_limit`` pagination, checks the ``x-api-key`` header (401 otherwise), can be told to
fail the next requests of a route (``fail_next``), and logs every request.

Its documents are built from Materials Project rows of ../shared/data: each material's
corrected total energy is its DFT formation energy referenced to the MP elemental entries,
stored as an uncorrected energy plus an energy adjustment (as the Materials Project serves
them), and its ``energy_above_hull`` is computed here with pymatgen over all served entries of
its chemical system, the way the Materials Project builds its thermo documents.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pandas as pd
from pymatgen.analysis.phase_diagram import PhaseDiagram
from pymatgen.core import Composition, Lattice, Structure
from pymatgen.entries.computed_entries import ComputedStructureEntry, ConstantEnergyAdjustment

from crysray.resources import dataset_file, mp_elemental_references_file

KEY = "3f9a1c7e5b2d4a6f8e0c1b3d5f7a9c2e"  # 32 characters, as real keys


def _chemsys(composition: Composition) -> str:
    return "-".join(sorted(el.symbol for el in composition.elements))


def element_energies() -> dict[str, float]:
    with gzip.open(mp_elemental_references_file(), "rt") as f:
        raw = json.load(f)
    return {s: d["energy"] / sum(d["composition"].values()) for s, d in raw.items()}


def materials_from_rows(frame: pd.DataFrame) -> list[dict]:
    """Thermo-like records (entry, chemsys) of CDVAE-format MP rows plus elemental entries."""
    mu = element_energies()
    out, elements = [], set()
    for row in frame.itertuples(index=False):
        structure = Structure.from_str(row.cif, fmt="cif")
        comp = structure.composition
        if not all(el.symbol in mu for el in comp):
            continue
        elements |= {el.symbol for el in comp}
        total = row.formation_energy_per_atom * comp.num_atoms + sum(
            n * mu[el.symbol] for el, n in comp.items()
        )
        out.append(_record(str(row.material_id), structure, total))
    for el in sorted(elements):
        out.append(
            _record(f"mp-ref-{el}", Structure(Lattice.cubic(3.0), [el], [[0, 0, 0]]), mu[el])
        )
    return out


def _record(material_id: str, structure: Structure, corrected: float) -> dict:
    adjustment = -0.05 * structure.composition.num_atoms  # served as MP serves corrections
    entry = ComputedStructureEntry(
        structure, corrected - adjustment, entry_id=f"{material_id}-GGA",
        energy_adjustments=[
            ConstantEnergyAdjustment(adjustment, 0.0, name="MP2020 test correction")
        ],
    )  # fmt: skip
    return {"material_id": material_id, "entry": entry, "chemsys": _chemsys(structure.composition)}


def thermo_docs(records: list[dict]) -> list[dict]:
    """Thermo documents with energy_above_hull from the diagram of each chemical system."""
    docs = []
    for record in records:
        elements = set(record["chemsys"].split("-"))
        pool = [r["entry"] for r in records if set(r["chemsys"].split("-")) <= elements]
        diagram = PhaseDiagram(pool)
        entry = record["entry"]
        docs.append({
            "material_id": record["material_id"],
            "chemsys": record["chemsys"],
            "thermo_type": "GGA_GGA+U",
            "energy_above_hull": diagram.get_e_above_hull(entry),
            "formation_energy_per_atom": diagram.get_form_energy_per_atom(entry),
            "entries": {"GGA": _plain_json(entry.as_dict())},
        })  # fmt: skip
    return docs


def _plain_json(value):
    """JSON as a real server sends it: NaN becomes null (strict parsers reject NaN)."""
    return json.loads(json.dumps(value).replace("NaN", "null"))


def summary_docs(frame: pd.DataFrame, theoretical_every: int = 3) -> list[dict]:
    """Summary documents of CDVAE-format MP rows (every n-th marked theoretical)."""
    docs = []
    for i, row in enumerate(frame.itertuples(index=False)):
        structure = Structure.from_str(row.cif, fmt="cif")
        docs.append(_plain_json({
            "material_id": str(row.material_id),
            "structure": structure.as_dict(),
            "nsites": len(structure),
            "elements": sorted(el.symbol for el in structure.composition),
            "chemsys": _chemsys(structure.composition),
            "formation_energy_per_atom": float(row.formation_energy_per_atom),
            "energy_above_hull": float(getattr(row, "e_above_hull", 0.0)),
            "theoretical": i % theoretical_every == 0,
        }))  # fmt: skip
    return docs


def mp20_rows(n: int | None = None) -> pd.DataFrame:
    frames = [pd.read_csv(dataset_file("mp_20_pilot", s)) for s in ("train", "val", "test")]
    frame = pd.concat(frames, ignore_index=True)
    return frame if n is None else frame.head(n)


class FakeMP:
    """``with FakeMP(thermo=..., summary=...) as server:`` then point CRYSRAY_MP_ENDPOINT at
    ``server.endpoint``."""

    def __init__(self, thermo: list[dict] = (), summary: list[dict] = (), key: str = KEY):
        self.docs = {"/materials/thermo/": list(thermo), "/materials/summary/": list(summary)}
        self.key = key
        self.requests: list[tuple[str, dict]] = []
        self.fail_next: dict[str, list[int]] = {}
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.endpoint = f"http://127.0.0.1:{self.httpd.server_port}/"

    def __enter__(self) -> FakeMP:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def data_requests(self) -> list[tuple[str, dict]]:
        return [r for r in self.requests if r[0] != "/heartbeat"]

    def answer(self, path: str, params: dict, key: str | None) -> tuple[int, dict]:
        with self.lock:
            self.requests.append((path, params))
            failures = self.fail_next.get(path)
            if failures:
                return failures.pop(0), {"detail": "Service temporarily unavailable"}
        if path.rstrip("/") == "/heartbeat":
            return 200, {"db_version": "2025.09.25", "version": "0.87.3",
                         "access_controlled_batch_ids": []}  # fmt: skip
        if key != self.key:
            return 401, {"detail": "Invalid or missing API key"}
        if path not in self.docs:
            return 404, {"detail": "Not Found"}
        hits = [d for d in self.docs[path] if _matches(d, params)]
        skip, limit = int(params.get("_skip", 0)), int(params.get("_limit", 1000))
        fields = params.get("_fields", "").split(",") if params.get("_fields") else None
        page = [{k: v for k, v in d.items() if fields is None or k in fields}
                for d in hits[skip : skip + limit]]  # fmt: skip
        return 200, {"data": page, "meta": {"total_doc": len(hits)}}

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                url = urlparse(self.path)
                params = {k: v[0] for k, v in parse_qs(url.query).items()}
                status, body = server.answer(url.path, params, self.headers.get("x-api-key"))
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        return Handler


@contextlib.contextmanager
def serving(monkeypatch, key: str | None = KEY, **docs):
    """A FakeMP with ``docs`` that crysray's client is pointed at (no back-off waits);
    ``MP_API_KEY`` is set to ``key``, or removed with None."""
    with FakeMP(**docs) as server:
        monkeypatch.setenv("CRYSRAY_MP_ENDPOINT", server.endpoint)
        monkeypatch.setenv("CRYSRAY_MP_BACKOFF", "0.01")
        if key is None:
            monkeypatch.delenv("MP_API_KEY", raising=False)
        else:
            monkeypatch.setenv("MP_API_KEY", key)
        yield server


def _matches(doc: dict, params: dict) -> bool:
    if "chemsys" in params and doc.get("chemsys") not in params["chemsys"].split(","):
        return False
    if "elements" in params and not set(params["elements"].split(",")) <= set(doc["elements"]):
        return False
    for name, field in (("nsites", "nsites"), ("energy_above_hull", "energy_above_hull")):
        low, high = params.get(f"{name}_min"), params.get(f"{name}_max")
        if (
            low is not None
            and doc[field] < float(low)
            or high is not None
            and doc[field] > float(high)
        ):
            return False
    return "theoretical" not in params or doc["theoretical"] == (params["theoretical"] == "True")
