"""crysray.resources: lookup order, verified atomic downloads, offline errors.

Downloads go to an HTTP server on 127.0.0.1 started here, serving copies of ../shared.
"""

from __future__ import annotations

import gzip
import http.server
import importlib.util
import json
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest
from support import REPO

import crysray.resources as res
from crysray.data.csv import load_split
from crysray.resources import ResourceError, dataset_file, matgl_model_dir

SHARED = res.shared_dirs()[0] if res.shared_dirs() else None
needs_shared = pytest.mark.skipif(SHARED is None, reason="needs ../shared next to the checkout")
M3GNET = "M3GNet-MP-2021.2.8-PES"


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, bytes] = {}  # URL path -> body
        self.cut_short: dict[str, int] = {}  # URL path -> how many more responses to truncate
        self.requests: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.server.requests.append(self.path)
        body = self.server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.server.cut_short.get(self.path, 0) > 0:
            self.server.cut_short[self.path] -= 1
            self.wfile.write(body[: len(body) // 2])  # then hang up, as a dropped connection
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=10)


@pytest.fixture
def fresh_machine(tmp_path, monkeypatch):
    """No env folders, no ../shared, an empty cache, downloads allowed, no retry waits."""
    for var in (
        "CRYSRAY_DATA_DIR",
        "CRYSRAY_MATGL_DIR",
        "CRYSRAY_MATGL_MODEL",
        "CRYSRAY_OFFLINE",
        "CRYSRAY_DATA_URL",
        "CRYSRAY_MATGL_URL",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CRYSRAY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(res, "shared_dirs", list)
    monkeypatch.setattr(res, "RETRY_DELAYS", (0.0, 0.0))
    return tmp_path / "cache"


def _csv_bytes(dataset: str, split: str) -> bytes:
    """The CSV as published upstream (../shared keeps some of them gzipped)."""
    folder = SHARED / "data" / dataset
    if (folder / f"{split}.csv").is_file():
        return (folder / f"{split}.csv").read_bytes()
    return gzip.decompress((folder / f"{split}.csv.gz").read_bytes())


def _serve_data(server, monkeypatch, dataset: str, split: str, body: bytes | None = None) -> str:
    remote = res.DATASETS[(dataset, split)]
    if body is None:
        stored = SHARED / "data" / remote.relpath
        body = stored.read_bytes() if stored.is_file() else _csv_bytes(dataset, split)
    server.files[f"/mirror/{remote.relpath}"] = body
    monkeypatch.setenv("CRYSRAY_DATA_URL", f"{server.url}/mirror/")
    return f"/mirror/{remote.relpath}"


def _files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


@needs_shared
@pytest.mark.parametrize(
    "dataset, split",
    [("perov_5", "test"), pytest.param("mp_20_pilot", "val", marks=pytest.mark.slow)],
)
def test_download_lands_verified_in_the_cache_and_loads(
    dataset, split, server, fresh_machine, monkeypatch
):
    """perov_5: git blob id of a plain CSV; mp_20_pilot: sha256 of a gzipped CSV."""
    path = _serve_data(server, monkeypatch, dataset, split)
    got = dataset_file(dataset, split)
    assert got == fresh_machine / "data" / res.DATASETS[(dataset, split)].relpath
    assert _files_under(fresh_machine / "data") == [got]  # no temporary file left over
    assert got.read_bytes() == server.files[path]
    assert dataset_file(dataset, split) == got and server.requests == [path]  # cached now
    if dataset == "mp_20_pilot":
        table = load_split(got, workers=1)
        assert len(table) == 1000
    else:
        assert len(pd.read_csv(got, usecols=["material_id"])) == 3785


@needs_shared
def test_checksum_mismatch_is_rejected_and_leaves_nothing(server, fresh_machine, monkeypatch):
    body = bytearray(_csv_bytes("carbon_24", "test"))
    body[1000] ^= 1  # one flipped bit
    _serve_data(server, monkeypatch, "carbon_24", "test", bytes(body))
    with pytest.raises(ResourceError, match="checksum") as err:
        dataset_file("carbon_24", "test")
    assert "\n" not in str(err.value) and "carbon_24" in str(err.value)
    assert _files_under(fresh_machine) == []


@needs_shared
def test_interrupted_download_never_leaves_a_partial_file(server, fresh_machine, monkeypatch):
    path = _serve_data(server, monkeypatch, "carbon_24", "val")
    server.cut_short[path] = 3  # every attempt is cut
    with pytest.raises(ResourceError, match=r"could not download.*closed after") as err:
        dataset_file("carbon_24", "val")
    assert len(server.requests) == 1 + len(res.RETRY_DELAYS)
    assert "\n" not in str(err.value)
    assert _files_under(fresh_machine) == []


@needs_shared
def test_interrupted_download_is_retried(server, fresh_machine, monkeypatch):
    path = _serve_data(server, monkeypatch, "carbon_24", "val")
    server.cut_short[path] = 1
    got = dataset_file("carbon_24", "val")
    assert got.read_bytes() == server.files[path] and len(server.requests) == 2
    assert _files_under(fresh_machine) == [got]


def test_offline_with_nothing_cached_says_what_and_where_in_one_line(fresh_machine, monkeypatch):
    monkeypatch.setenv("CRYSRAY_OFFLINE", "1")
    for call, words in [
        (lambda: dataset_file("perov_5", "test"), ["perov_5", "test.csv", "CRYSRAY_DATA_DIR"]),
        (lambda: matgl_model_dir(M3GNET), [M3GNET, "model.pt", "CRYSRAY_MATGL_DIR"]),
        (res.mp_elemental_references_file, ["mp-elemental-reference", "CRYSRAY_DATA_DIR"]),
    ]:
        with pytest.raises(ResourceError) as err:
            call()
        message = str(err.value)
        assert "\n" not in message and "CRYSRAY_OFFLINE" in message
        assert str(fresh_machine) in message  # the cache folder to put the file in
        assert all(word in message for word in words), message
    assert _files_under(fresh_machine) == []


def test_unreachable_server_counts_as_offline(fresh_machine, monkeypatch):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("CRYSRAY_DATA_URL", f"http://127.0.0.1:{port}")
    with pytest.raises(ResourceError, match=r"could not download perov_5/test.csv") as err:
        dataset_file("perov_5", "test")
    assert "\n" not in str(err.value) and "CRYSRAY_DATA_DIR" in str(err.value)
    assert isinstance(err.value, FileNotFoundError)  # what every CLI turns into exit code 2


def test_unknown_split_fails_without_trying_the_network(fresh_machine, server, monkeypatch):
    monkeypatch.setenv("CRYSRAY_DATA_URL", server.url)
    with pytest.raises(ResourceError, match="no known public copy"):
        dataset_file("mp_20_pilot", "holdout")  # a split nobody publishes
    assert server.requests == []


def test_lookup_order_env_then_shared_then_cache(tmp_path, fresh_machine, monkeypatch):
    monkeypatch.setenv("CRYSRAY_OFFLINE", "1")
    places = {
        "env": tmp_path / "env",
        "shared": tmp_path / "shared" / "data",
        "cache": fresh_machine / "data",
    }
    for name, folder in places.items():
        (folder / "perov_5").mkdir(parents=True)
        (folder / "perov_5" / "test.csv").write_text(name)
    monkeypatch.setattr(res, "shared_dirs", lambda: [tmp_path / "shared"])
    monkeypatch.setenv("CRYSRAY_DATA_DIR", str(places["env"]))
    assert dataset_file("perov_5", "test").read_text() == "env"
    monkeypatch.setenv("CRYSRAY_DATA_DIR", str(tmp_path / "elsewhere"))  # set but without the file
    assert dataset_file("perov_5", "test").read_text() == "shared"
    monkeypatch.delenv("CRYSRAY_DATA_DIR")
    assert dataset_file("perov_5", "test").read_text() == "shared"
    monkeypatch.setattr(res, "shared_dirs", list)
    assert dataset_file("perov_5", "test").read_text() == "cache"
    (places["cache"] / "perov_5" / "test.csv").unlink()
    (places["cache"] / "perov_5" / "test.csv.gz").write_bytes(gzip.compress(b"gz"))
    assert dataset_file("perov_5", "test").name == "test.csv.gz"


def test_matgl_lookup_order(tmp_path, fresh_machine, monkeypatch):
    monkeypatch.setenv("CRYSRAY_OFFLINE", "1")

    def model(folder: Path) -> Path:
        folder.mkdir(parents=True)
        for file in res.MATGL_FILES:
            (folder / file).write_text(file)
        return folder

    chosen = model(tmp_path / "chosen" / M3GNET)
    in_env = model(tmp_path / "models" / M3GNET)
    in_shared = model(tmp_path / "shared" / "matgl" / M3GNET)
    in_cache = model(fresh_machine / "matgl" / M3GNET)
    monkeypatch.setattr(res, "shared_dirs", lambda: [tmp_path / "shared"])
    monkeypatch.setenv("CRYSRAY_MATGL_MODEL", str(chosen))
    monkeypatch.setenv("CRYSRAY_MATGL_DIR", str(tmp_path / "models"))
    assert matgl_model_dir(M3GNET) == chosen
    monkeypatch.delenv("CRYSRAY_MATGL_MODEL")
    assert matgl_model_dir(M3GNET) == in_env
    monkeypatch.delenv("CRYSRAY_MATGL_DIR")
    assert matgl_model_dir(M3GNET) == in_shared
    (in_shared / "state.pt").unlink()  # an incomplete folder is skipped
    assert matgl_model_dir(M3GNET) == in_cache
    with pytest.raises(ValueError):
        matgl_model_dir("../etc")


@needs_shared
def test_matgl_model_download_verified_and_loaded_through_crysray(
    server, fresh_machine, monkeypatch
):
    for file in res.MATGL_FILES:
        body = (SHARED / "matgl" / M3GNET / file).read_bytes()
        server.files[f"/pretrained/{M3GNET}/{file}"] = body
    monkeypatch.setenv("CRYSRAY_MATGL_URL", f"{server.url}/pretrained")
    folder = matgl_model_dir(M3GNET)
    assert folder == fresh_machine / "matgl" / M3GNET
    assert _files_under(fresh_machine) == [folder / f for f in sorted(res.MATGL_FILES)]
    for remote in res.MATGL_MODELS[M3GNET]:
        cached = fresh_machine / "matgl" / remote.relpath
        assert res.file_checksum(cached, "sha256") == remote.checksum
    assert matgl_model_dir(M3GNET) == folder and len(server.requests) == 3  # cached now

    from crysray.filter.potential import detect_legacy_checkpoint, load_potential, model_name

    assert detect_legacy_checkpoint(folder)
    potential = load_potential(M3GNET, device="cpu")  # by name: resolved, then converted
    assert model_name(potential) == M3GNET and not potential.training
    block = potential.model.graph_layers[0].conv
    assert type(block).__name__ == "DestinationM3GNetGraphConv"


@needs_shared
def test_corrupt_matgl_file_is_rejected(server, fresh_machine, monkeypatch):
    for file in res.MATGL_FILES:
        server.files[f"/m/{M3GNET}/{file}"] = (SHARED / "matgl" / M3GNET / file).read_bytes()
    state = bytearray(server.files[f"/m/{M3GNET}/state.pt"])
    state[-100] ^= 1
    server.files[f"/m/{M3GNET}/state.pt"] = bytes(state)
    monkeypatch.setenv("CRYSRAY_MATGL_URL", f"{server.url}/m")
    with pytest.raises(ResourceError, match=r"state.pt.*checksum"):
        matgl_model_dir(M3GNET)
    assert not (fresh_machine / "matgl" / M3GNET / "state.pt").exists()
    assert not list((fresh_machine / "matgl" / M3GNET).glob(".*"))  # no temporary files


@needs_shared
def test_mp_references_download(server, fresh_machine, monkeypatch):
    relpath = res.MP_REFERENCES
    server.files[f"/d/{relpath}"] = (SHARED / "data" / relpath).read_bytes()
    monkeypatch.setenv("CRYSRAY_DATA_URL", f"{server.url}/d")
    got = res.mp_elemental_references_file()
    assert got == fresh_machine / "data" / relpath
    assert len(json.loads(gzip.decompress(got.read_bytes()))) == 89


def test_checksums():
    assert res.checksum_matches("gitblob:206f82f8aa", "gitblob:206f82f8")
    assert not res.checksum_matches("gitblob:206f82f9aa", "gitblob:206f82f8")
    assert not res.checksum_matches("sha256:abcd", "sha256:abc")  # sha256: no prefixes
    assert not res.checksum_matches("sha256:abc", "gitblob:abc")


def test_checksum_is_the_git_blob_id(tmp_path):
    path = tmp_path / "hello.txt"
    path.write_bytes(b"hello\n")  # `git hash-object` of this content
    assert res.file_checksum(path, "gitblob") == "gitblob:ce013625030ba8dba906f756967f9e9ca394464a"


def test_installed_checkout_read_from_direct_url(monkeypatch):
    class Dist:
        def __init__(self, text):
            self.text = text

        def read_text(self, name):
            return self.text if name == "direct_url.json" else None

    record = {"url": "file:///opt/src/crysray", "dir_info": {"editable": True}}
    monkeypatch.setattr(res.importlib.metadata, "distributions", lambda **_: [])
    monkeypatch.setattr(res.importlib.metadata, "distribution", lambda _: Dist(json.dumps(record)))
    assert res.installed_checkout() == Path("/opt/src/crysray")
    # a source tree's egg-info (no record) shadows the installed one: the record is still found
    monkeypatch.setattr(res.importlib.metadata, "distribution", lambda _: Dist(None))
    monkeypatch.setattr(
        res.importlib.metadata, "distributions", lambda **_: [Dist(None), Dist(json.dumps(record))]
    )
    assert res.installed_checkout() == Path("/opt/src/crysray")
    monkeypatch.setattr(res.importlib.metadata, "distributions", lambda **_: [])
    record = {"url": "https://example.org/crysray.tar.gz", "archive_info": {}}
    monkeypatch.setattr(res.importlib.metadata, "distribution", lambda _: Dist(json.dumps(record)))
    assert res.installed_checkout() is None
    monkeypatch.setattr(res.importlib.metadata, "distribution", lambda _: Dist(None))
    assert res.installed_checkout() is None


def test_a_copy_of_the_repository_finds_shared_through_the_installed_checkout(tmp_path):
    """What ``ray job submit --working-dir .`` does: run a copy whose parent has no shared/."""
    installed = res.installed_checkout()
    if installed is None or not (installed.parent / "shared" / "data").is_dir():
        pytest.skip("crysray is not installed from a checkout with ../shared")
    copy = tmp_path / "working_dir_files" / "_ray_pkg_0123"
    shutil.copytree(
        REPO / "crysray", copy / "crysray", ignore=shutil.ignore_patterns("__pycache__")
    )
    code = (
        "import crysray.resources as r; print(r.__file__); print(r.dataset_file('perov_5', 'test'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        cwd=copy,
        capture_output=True,
        text=True,
        env={
            "PATH": "/usr/bin:/bin",
            "HOME": str(tmp_path),
            "PYTHONPATH": str(copy),
            "CRYSRAY_OFFLINE": "1",
        },
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    module, found = out.stdout.split()
    assert Path(module).is_relative_to(copy)
    assert Path(found) == installed.parent / "shared" / "data" / "perov_5" / "test.csv"


def test_cli_turns_a_missing_dataset_into_one_error_line(
    fresh_machine, monkeypatch, capsys, tmp_path
):
    monkeypatch.setenv("CRYSRAY_OFFLINE", "1")
    monkeypatch.syspath_prepend(str(REPO / "jobs"))  # as when run as a script
    script = REPO / "jobs" / "mass_sample.py"
    spec = importlib.util.spec_from_file_location("mass_sample_job", script)
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    assert job.main(["--out", str(tmp_path / "out"), "--num-samples", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mass_sample: error: ") and "\n" not in err and "perov_5" in err
    assert not (tmp_path / "out").exists()


@needs_shared
def test_composed_split_is_its_parts_in_order_and_built_once(server, fresh_machine, monkeypatch):
    """mp_20_reduced/train = MP-20 pilot train + MP-20 binary/ternary val, downloaded parts."""
    paths = [_serve_data(server, monkeypatch, *part) for part in res.COMPOSED[
        ("mp_20_reduced", "train")].parts]  # fmt: skip
    got = dataset_file("mp_20_reduced", "train")
    parts = [pd.read_csv(SHARED / "data" / res.DATASETS[p].relpath)
             for p in res.COMPOSED[("mp_20_reduced", "train")].parts]  # fmt: skip
    composed = pd.read_csv(got)
    assert len(composed) == 1000 + 7140
    assert composed["material_id"].tolist() == [m for f in parts for m in f["material_id"]]
    assert composed["cif"].tolist() == [c for f in parts for c in f["cif"]]
    assert sorted(server.requests) == sorted(paths)
    assert dataset_file("mp_20_reduced", "train") == got and len(server.requests) == 2
    leftovers = [p for p in _files_under(fresh_machine) if p.name.endswith(".tmp")]
    assert leftovers == []


@needs_shared
def test_composed_split_drops_evaluation_rows_and_large_cells(monkeypatch, tmp_path):
    """The rules of mp_20_csp/train (no row of an evaluation split, cells up to a size), on
    two small parts: pilot val + pilot test, minus pilot test, cells of <= 8 atoms."""
    from crysray.structures import parse_cif

    monkeypatch.setenv("CRYSRAY_CACHE", str(tmp_path / "cache"))
    rule = res.Composed((("mp_20_pilot", "val"), ("mp_20_pilot", "test")),
                        exclude=(("mp_20_pilot", "test"),), max_atoms=8)  # fmt: skip
    monkeypatch.setitem(res.COMPOSED, ("toy_csp", "train"), rule)
    composed = pd.read_csv(dataset_file("toy_csp", "train"))
    val = pd.read_csv(SHARED / "data" / res.DATASETS[("mp_20_pilot", "val")].relpath)
    small = [len(parse_cif(c)) <= 8 for c in val["cif"]]
    assert composed["material_id"].tolist() == val["material_id"][small].tolist()
    assert 0 < len(composed) < len(val)
    real = res.COMPOSED[("mp_20_csp", "train")]
    assert set(real.exclude) == {("mp_20_pilot", "val"), ("mp_20_pilot", "test")}
    assert real.max_atoms == 20
