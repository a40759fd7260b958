"""Where crysray finds the files it does not ship: benchmark splits, MatGL potentials and the
Materials Project elemental references.

Every file is looked up in this order, first hit wins:

1. the environment: ``$CRYSRAY_DATA_DIR`` (dataset folders and ``mp_reference/``),
   ``$CRYSRAY_MATGL_DIR`` (model folders) or ``$CRYSRAY_MATGL_MODEL`` (one model folder);
2. ``shared/`` next to the checkout: the one this module runs from and the one crysray was
   pip-installed from. Both are needed because ``ray job submit --working-dir .`` runs a copy
   of the repository whose parent holds no ``shared/``, while the installed checkout does;
3. the user cache, ``$CRYSRAY_CACHE`` or ``~/.cache/crysray`` (``data/``, ``matgl/``);
4. a download from the file's public home into that cache, checked against the checksum
   pinned below (``$CRYSRAY_DATA_URL`` / ``$CRYSRAY_MATGL_URL`` replace the home with a mirror
   laid out like the data / models folder). ``CRYSRAY_OFFLINE=1`` forbids downloads.

A file that cannot be found or fetched raises ``ResourceError``, a FileNotFoundError whose
message is one line naming the file and where to put it, so every CLI reports it as
``<job>: error: ...`` with exit code 2.
"""

from __future__ import annotations

import hashlib
import http.client
import importlib.metadata
import json
import logging
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

from crysray.paths import default_cache_dir

logger = logging.getLogger("crysray.resources")

RAW = "https://raw.githubusercontent.com"
# DiffCSP's data files never changed after release; the blob checksums pin their content.
DIFFCSP = f"{RAW}/jiaor17/DiffCSP/main/data"
CDVAE = f"{RAW}/txie-93/cdvae/f857f598d6f6cca5dc1ea0582d228f12dcc2c2ea/data"
_WT = f"{RAW}/SymmetryAdvantage/WyckoffTransformer"
WYCKOFF_PILOT = f"{_WT}/85bd47b33a7b55d418b1de10dad297fcf73b9b44/data"
WYCKOFF = f"{_WT}/507e8f147a0e87905c2574ebfbbfc9fa21c2fb09/data"
MATGL = (
    f"{RAW}/materialsvirtuallab/matgl/e9cde2291acd0b4c4a342428e7dd5e4d596b7bf9/pretrained_models"
)
MATBENCH_DISCOVERY = f"{RAW}/janosh/matbench-discovery/v1.0.0/data/mp"

MP_REFERENCES = "mp_reference/mp-elemental-reference-entries-2023-02-07.json.gz"
MATGL_FILES = ("model.pt", "state.pt", "model.json")

CHUNK_BYTES = 1 << 16
TIMEOUT_SECONDS = 60.0
RETRY_DELAYS = (1.0, 4.0)  # seconds before the 2nd and 3rd attempt


class ResourceError(FileNotFoundError):
    """A file crysray needs is not on this machine and could not be fetched (one-line message)."""


@dataclass(frozen=True)
class Remote:
    """A file's public home.

    ``relpath`` is where the file lives under the data (or models) folder, the cache and a
    mirror's base URL. ``checksum`` is ``sha256:<hex>`` of the bytes, or ``gitblob:<hex>`` (a
    full id or a prefix of at least 8 digits): ``sha1(b"blob <size>\\0" + bytes)``, the id git
    gives the file, which is what the dataset READMEs publish.
    """

    relpath: str
    url: str
    checksum: str


def _split(base: str, dataset: str, split: str, checksum: str, ext: str = ".csv") -> Remote:
    name = f"{dataset}/{split}{ext}"
    return Remote(name, f"{base}/{name}", checksum)


# Blob ids and sha256 sums as listed in ../shared/data/README.md.
DATASETS: dict[tuple[str, str], Remote] = {
    ("perov_5", "train"): _split(
        DIFFCSP, "perov_5", "train", "gitblob:62ce91686595d45d484d026bbfd14c2518b66abd"
    ),
    ("perov_5", "val"): _split(
        DIFFCSP, "perov_5", "val", "gitblob:872fc814e6a513024cb923a0576d723fca25969c"
    ),
    ("perov_5", "test"): _split(
        DIFFCSP, "perov_5", "test", "gitblob:cb97501bed31c8cdcb603f9b9c3a59842828c9d8"
    ),
    ("mp_20", "train"): _split(DIFFCSP, "mp_20", "train", "gitblob:206f82f8"),
    ("mp_20", "val"): _split(DIFFCSP, "mp_20", "val", "gitblob:6070ef70"),
    ("mp_20", "test"): _split(DIFFCSP, "mp_20", "test", "gitblob:133f5697"),
    ("mpts_52", "val"): _split(
        DIFFCSP, "mpts_52", "val", "gitblob:a377ba0ca7bee37ee69d9f50f8362eaa35d9f690"
    ),
    ("mpts_52", "test"): _split(DIFFCSP, "mpts_52", "test", "gitblob:2e8af159"),
    # the paper configurations' training splits (not in ../shared): blob ids of jiaor17/DiffCSP
    # 7121d15 and txie-93/cdvae f857f59
    ("mpts_52", "train"): _split(
        DIFFCSP, "mpts_52", "train", "gitblob:28c53b0a0fd3f32fb8078aca8e5b484e372790c6"
    ),
    ("carbon_24", "val"): _split(
        CDVAE, "carbon_24", "val", "gitblob:b3e29b927883642426ca1d9632d00359b412742b"
    ),
    ("carbon_24", "test"): _split(
        CDVAE, "carbon_24", "test", "gitblob:9beca843fde489de1fe288b32f9e3ff710d42803"
    ),
    ("carbon_24", "train"): _split(
        CDVAE, "carbon_24", "train", "gitblob:5e7ae970fbad8ddc46b6963e8cd6e425f11783a6"
    ),
    # The default hull reference of crysray.filter.reference.
    ("mp_20_pilot", "train"): _split(
        WYCKOFF_PILOT,
        "mp_20_pilot",
        "train",
        ext=".csv.gz",
        checksum="sha256:a89a708d16d80401fe256d6742680f2e02ed5746f1a685cfea1b509754fe728e",
    ),
    ("mp_20_pilot", "val"): _split(
        WYCKOFF_PILOT,
        "mp_20_pilot",
        "val",
        ext=".csv.gz",
        checksum="sha256:b03d4aeb363a7ec3018cea66e2e69fce3ca3b518c900531a03a1266d5d392eb6",
    ),
    ("mp_20_pilot", "test"): _split(
        WYCKOFF_PILOT,
        "mp_20_pilot",
        "test",
        ext=".csv.gz",
        checksum="sha256:c0b5922164322338d0e282d4429b2dc8ab31ffa39d456d05e102b6ec88ea7262",
    ),
    ("mp_20_biternary", "val"): _split(
        WYCKOFF,
        "mp_20_biternary",
        "val",
        ext=".csv.gz",
        checksum="sha256:f0a1743241ade50592ce24dd3efc8b5e4d4d84c6a72e827c16699e83ce254f07",
    ),
}

@dataclass(frozen=True)
class Composed:
    """A split made from others: their rows verbatim, in order, minus the rows whose
    ``material_id`` is in an ``exclude`` split (so a training set never holds a row of the
    split it is validated or tested on) and, with ``max_atoms``, cells above that size.
    Only the columns every part has are kept."""

    parts: tuple[tuple[str, str], ...]
    exclude: tuple[tuple[str, str], ...] = ()
    max_atoms: int = 0


# mp_20_reduced is the part of MP-20 available offline: the pilot samples plus the binary and
# ternary compounds of the val split as training data. It is NOT the MP-20 benchmark: numbers on
# it are labelled as such. (Its train holds 796 of its 1000 val rows: the pilot val was sampled
# from the same MP-20 val split. mp_20_csp removes them.)
# mp_20_csp is every Materials-Project row crysray has offline, for CSP on MP chemistry: the
# same parts plus the MPTS-52 val cells of <= 20 atoms (the MP-20 regime), minus every row of
# the pilot val and test splits.
_PILOT_EVAL = (("mp_20_pilot", "val"), ("mp_20_pilot", "test"))
COMPOSED: dict[tuple[str, str], Composed] = {
    ("mp_20_reduced", "train"): Composed((("mp_20_pilot", "train"), ("mp_20_biternary", "val"))),
    ("mp_20_reduced", "val"): Composed((("mp_20_pilot", "val"),)),
    ("mp_20_reduced", "test"): Composed((("mp_20_pilot", "test"),)),
    ("mp_20_csp", "train"): Composed(
        (("mp_20_pilot", "train"), ("mp_20_biternary", "val"), ("mpts_52", "val")),
        exclude=_PILOT_EVAL,
        max_atoms=20,
    ),
    ("mp_20_csp", "val"): Composed((("mp_20_pilot", "val"),)),
    ("mp_20_csp", "test"): Composed((("mp_20_pilot", "test"),)),
}

MP_REFERENCES_REMOTE = Remote(
    MP_REFERENCES,
    f"{MATBENCH_DISCOVERY}/2023-02-07-mp-elemental-reference-entries.json.gz",
    "sha256:9fd6ef848a91c88840a0d1709b5856d0edb4af22095237e59db52f2acd6bbf79",
)

# sha256 of each model's files, as listed in ../shared/matgl/README.md.
_MATGL_SHA256 = {
    "TensorNet-MatPES-PBE-v2025.1-PES": (
        "1cba95766c872082eec349a7e417a28461aea450b655a0301eec060a985fdd71",
        "d2dfa51a65d23a47fd935eb0628177d2a1088584562091ef3350ce3a002fce6a",
        "cf7d1db6c89da617245021a8fde16fb79db5bc06f7b6e11ee837f06eb32137d8",
    ),
    "M3GNet-MatPES-PBE-v2025.1-PES": (
        "94b511e45d576cb38a54e2d952fac1eb66e179fb3cddf48ccd86bf4f689f86df",
        "9f710eac88ec2c666c8e488883c59768cf11c116f177e9d82896ae56f3fc338d",
        "6ab754c8593efef1005a37882a27b25417153bfd0b5624d0943901f18116b552",
    ),
    "M3GNet-MP-2021.2.8-PES": (
        "62678f76fbc5d8997ea1d7f3c4bf086df200102125c802b32b08ce14fbcde25b",
        "a9aa723705bd1a242ec8749332f137811c4a94e17995a564f8f94a9aca68061b",
        "05e7db8676ceb37eb07848aff49c556b188699e1035f3df0cbbf1a2c4959148f",
    ),
    "M3GNet-MP-2018.6.1-Eform": (
        "d4d6a8b5c871fff515db4948ea7439d8c7825a9ee3240567afeedabadd686b58",
        "166d4dba4aadbc5feb27e8aa047145facbcdadb9c5de067768e00515be3b3c1f",
        "a99ca70012706a09434617a793556bbd100423dafaa9f9ebb8708fd20e226575",
    ),
    "MEGNet-MP-2018.6.1-Eform": (
        "2cafe3234e3ab5987f22b6d2cb6be15a68121046571129ace5ed3fcad1c19624",
        "35381368b17a2783f9ee09af5556cf1d84b74bf786b82d3fadd4acb38c51d040",
        "d858219134667d55e3c183435475ba248231a67311573373ed7298191f05d0a4",
    ),
}
MATGL_MODELS: dict[str, tuple[Remote, ...]] = {
    name: tuple(
        Remote(f"{name}/{file}", f"{MATGL}/{name}/{file}", f"sha256:{digest}")
        for file, digest in zip(MATGL_FILES, digests)
    )
    for name, digests in _MATGL_SHA256.items()
}


# ---------------------------------------------------------------- public look-ups


def dataset_file(dataset: str, split: str) -> Path:
    """The CDVAE-format CSV (or CSV.gz) of one benchmark split, e.g. ``("perov_5", "test")``.

    Raises:
        ResourceError: not on this machine and not downloadable (offline, unknown split,
            failed or corrupt download).
    """
    relpaths = [f"{dataset}/{split}.csv", f"{dataset}/{split}.csv.gz"]
    found = _first_file(relpaths, _data_dirs())
    if found is not None:
        return found
    if (dataset, split) in COMPOSED:
        return _compose(dataset, split)
    remote = DATASETS.get((dataset, split))
    hint = _data_hint(dataset, f"{split}.csv")
    if remote is None:
        raise ResourceError(
            f"no {split}.csv(.gz) for dataset {dataset!r} on this machine and no known public "
            f"copy: {hint}"
        )
    return _download(remote, "CRYSRAY_DATA_URL", _cache_root() / "data", hint)


def _compose(dataset: str, split: str) -> Path:
    """Write a composed split into the cache (once).

    The parts are pinned by checksum and the rules are fixed, so the cached file never goes
    stale.
    """
    import pandas as pd  # only composed splits need it

    from crysray.atomic import atomic_path

    rule = COMPOSED[(dataset, split)]
    frames = [pd.read_csv(dataset_file(*part)) for part in rule.parts]
    columns = [c for c in frames[0].columns if all(c in f.columns for f in frames)]
    table = pd.concat([f[columns] for f in frames], ignore_index=True)
    excluded = {m for part in rule.exclude for m in pd.read_csv(dataset_file(*part))["material_id"]}
    table = table[~table["material_id"].isin(excluded)]
    if rule.max_atoms:
        table = table[[_cif_sites(cif) <= rule.max_atoms for cif in table["cif"]]]
    final = _cache_root() / "data" / dataset / f"{split}.csv.gz"
    with atomic_path(final) as tmp:
        table.to_csv(tmp, index=False, compression="gzip")
    return final


def _cif_sites(cif: str) -> int:
    from crysray.structures import parse_cif  # only size-filtered splits need pymatgen

    return len(parse_cif(cif))


def matgl_model_dir(name: str) -> Path:
    """A folder holding ``model.pt``, ``state.pt`` and ``model.json`` of a MatGL model.

    Args:
        name: a folder name of ../shared/matgl, e.g. ``"M3GNet-MP-2021.2.8-PES"``.

    Raises:
        ResourceError: as for ``dataset_file``.
    """
    if not name or Path(name).name != name:
        raise ValueError(f"{name!r} is not a model name (a folder name without '/')")
    chosen = os.environ.get("CRYSRAY_MATGL_MODEL")
    folders = [Path(chosen)] if chosen and Path(chosen).name == name else []
    for root in _env_dirs("CRYSRAY_MATGL_DIR") + [s / "matgl" for s in shared_dirs()]:
        folders.append(root / name)
    for folder in folders:
        if all((folder / f).is_file() for f in MATGL_FILES):
            return folder
    cache = _cache_root() / "matgl"
    if name not in MATGL_MODELS:
        if all((cache / name / f).is_file() for f in MATGL_FILES):
            return cache / name
        raise ResourceError(
            f"MatGL model {name!r} not on this machine and no known public copy: put "
            f"{', '.join(MATGL_FILES)} in $CRYSRAY_MATGL_DIR/{name}/ or {cache / name}/"
        )
    hint = f"put {', '.join(MATGL_FILES)} in $CRYSRAY_MATGL_DIR/{name}/ or {cache / name}/"
    for remote in MATGL_MODELS[name]:
        if not (cache / remote.relpath).is_file():
            _download(remote, "CRYSRAY_MATGL_URL", cache, hint)
    return cache / name


def mp_elemental_references_file() -> Path:
    """The Materials Project elemental reference entries (2023-02-07), a json.gz of
    ``symbol -> ComputedEntry`` dicts.

    Raises:
        ResourceError: as for ``dataset_file``.
    """
    found = _first_file([MP_REFERENCES], _data_dirs())
    if found is not None:
        return found
    hint = _data_hint("mp_reference", Path(MP_REFERENCES).name)
    return _download(MP_REFERENCES_REMOTE, "CRYSRAY_DATA_URL", _cache_root() / "data", hint)


def shared_dirs() -> list[Path]:
    """Existing ``shared/`` folders next to the checkouts crysray may be running from."""
    checkouts = [Path(__file__).resolve().parents[1]]
    installed = installed_checkout()
    if installed is not None:
        checkouts.append(installed)
    found: list[Path] = []
    for checkout in checkouts:
        shared = checkout.parent / "shared"
        if shared.is_dir() and shared not in found:
            found.append(shared)
    return found


def installed_checkout() -> Path | None:
    """The local folder crysray was pip-installed from (editable or not), if pip recorded one.

    pip writes it to the distribution's ``direct_url.json`` (PEP 610). A source tree's own
    ``crysray.egg-info`` (no such file) can shadow the installed record when Python runs from
    the checkout, so every crysray distribution on the path is asked.
    """
    try:
        texts = [importlib.metadata.distribution("crysray").read_text("direct_url.json")]
        texts += [d.read_text("direct_url.json")
                  for d in importlib.metadata.distributions(name="crysray")]  # fmt: skip
        info = next((json.loads(t) for t in texts if t), {})
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return None
    url = urllib.parse.urlparse(info.get("url", ""))
    if url.scheme != "file" or "dir_info" not in info:
        return None
    return Path(urllib.request.url2pathname(url.path))


# ---------------------------------------------------------------- lookup helpers


def _cache_root() -> Path:
    return default_cache_dir()


def _env_dirs(variable: str) -> list[Path]:
    value = os.environ.get(variable)
    return [Path(value)] if value else []


def _data_dirs() -> list[Path]:
    return (
        _env_dirs("CRYSRAY_DATA_DIR")
        + [s / "data" for s in shared_dirs()]
        + [_cache_root() / "data"]
    )


def _first_file(relpaths: list[str], folders: list[Path]) -> Path | None:
    for folder in folders:
        for relpath in relpaths:
            if (folder / relpath).is_file():
                return folder / relpath
    return None


def _data_hint(folder: str, filename: str) -> str:
    return f"put {filename} in $CRYSRAY_DATA_DIR/{folder}/ or {_cache_root() / 'data' / folder}/"


def _offline() -> bool:
    return os.environ.get("CRYSRAY_OFFLINE", "").strip().lower() not in ("", "0", "false", "no")


# ---------------------------------------------------------------- download


class _Transient(Exception):
    """A failure worth retrying (connection trouble, server error, short body)."""


class _ChecksumMismatch(Exception):
    pass


def _download(remote: Remote, mirror_variable: str, root: Path, hint: str) -> Path:
    """Fetch ``remote`` to ``root / remote.relpath``, verified, or raise ResourceError."""
    dest = root / remote.relpath
    mirror = os.environ.get(mirror_variable)
    url = f"{mirror.rstrip('/')}/{remote.relpath}" if mirror else remote.url
    if _offline():
        raise ResourceError(
            f"{remote.relpath} is not on this machine and CRYSRAY_OFFLINE forbids downloading it "
            f"from {url}: {hint}"
        )
    logger.info("downloading %s from %s", remote.relpath, url)
    error: Exception | None = None
    for delay in (0.0, *RETRY_DELAYS):
        time.sleep(delay)
        try:
            _fetch_once(url, dest, remote.checksum)
            return dest
        except _Transient as e:
            error = e
            logger.warning("download of %s failed (%s), retrying", remote.relpath, e)
        except urllib.error.HTTPError as e:  # 404 and friends: retrying will not help
            error = e
            break
        except _ChecksumMismatch as e:
            raise ResourceError(
                f"{remote.relpath} from {url} failed its checksum ({e}), nothing was kept: {hint}"
            ) from None
    reason = f"HTTP {error.code}" if isinstance(error, urllib.error.HTTPError) else str(error)
    raise ResourceError(f"could not download {remote.relpath} from {url} ({reason}): {hint}")


def _fetch_once(url: str, dest: Path, checksum: str) -> None:
    from tqdm import tqdm

    dest.parent.mkdir(parents=True, exist_ok=True)
    # A unique name in the destination folder: os.replace is then atomic, and concurrent
    # downloaders (one per Ray actor) never see or clobber each other's partial files.
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.part")
    try:
        try:
            with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as response:
                length = response.headers.get("Content-Length")
                expected = int(length) if length else None
                received = 0
                with (
                    open(tmp, "wb") as out,
                    tqdm(
                        total=expected,
                        unit="B",
                        unit_scale=True,
                        unit_divisor=1024,
                        desc=dest.name,
                        file=sys.stderr,
                        leave=False,
                        mininterval=1.0,
                    ) as bar,
                ):
                    while chunk := response.read(CHUNK_BYTES):
                        out.write(chunk)
                        received += len(chunk)
                        bar.update(len(chunk))
                    out.flush()
                    os.fsync(out.fileno())
        except urllib.error.HTTPError as e:
            if e.code == 429 or e.code >= 500:
                raise _Transient(f"HTTP {e.code}") from None
            raise
        except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
            reason = getattr(e, "reason", None) or e
            raise _Transient(f"{type(e).__name__}: {reason}") from None
        # http.client returns a short body without complaint when the server hangs up early.
        if expected is not None and received != expected:
            raise _Transient(f"connection closed after {received} of {expected} bytes")
        actual = file_checksum(tmp, checksum.split(":", 1)[0])
        if not checksum_matches(actual, checksum):
            raise _ChecksumMismatch(f"expected {checksum}, got {actual}")
        os.replace(tmp, dest)
        _fsync_dir(dest.parent)
    finally:
        tmp.unlink(missing_ok=True)


def file_checksum(path: str | os.PathLike, kind: str) -> str:
    """``<kind>:<hex>`` of a file, ``kind`` being ``sha256`` or ``gitblob``."""
    path = Path(path)
    if kind == "sha256":
        digest = hashlib.sha256()
    elif kind == "gitblob":
        digest = hashlib.sha1()
        digest.update(b"blob %d\0" % path.stat().st_size)
    else:
        raise ValueError(f"unknown checksum kind {kind!r}")
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return f"{kind}:{digest.hexdigest()}"


def checksum_matches(actual: str, expected: str) -> bool:
    """Equal, or ``expected`` a git blob id prefix (>= 8 hex digits) of ``actual``."""
    kind, _, want = expected.partition(":")
    if kind == "gitblob" and 8 <= len(want) < 40:
        return actual.startswith(f"{kind}:{want.lower()}")
    return actual == f"{kind}:{want.lower()}"


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not supported everywhere; the rename itself already happened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
