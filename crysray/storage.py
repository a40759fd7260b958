"""Where a run's files live: a local directory or a prefix on object storage (pyarrow.fs).

A location is a plain path (a local directory, as always), ``file:///abs/path``,
``s3://bucket/prefix`` or ``gs://bucket/prefix``: any URL ``pyarrow.fs.FileSystem.from_uri``
understands, with its query options (e.g. ``s3://bucket/run?endpoint_override=host:9000&scheme=
http``). Credentials come from the environment only (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_SESSION_TOKEN, AWS_PROFILE, AWS_ENDPOINT_URL, instance roles; Google's default credentials
for gs://). A URL carrying them (``s3://key:secret@bucket``) is refused, so that a location can
be printed, logged and handed to Ray actors as it is.

Writes are all-or-nothing for readers. On local disk a file is written next to its final name
and renamed onto it (crysray.atomic). On object storage an object becomes visible only once its
upload completes, so the final key is written directly: the bytes are prepared in memory and
sent in one stream (S3: a single PUT below pyarrow's multipart size), never a half-written
object.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from crysray.atomic import atomic_path, write_text_atomic

SCHEMES = "a local path, file:///path, s3://bucket/prefix or gs://bucket/prefix"


class StorageError(ValueError):
    """A location that cannot be used (bad URL, unknown scheme, missing bucket)."""


def is_url(location: str | os.PathLike) -> bool:
    return "://" in str(location)


class Storage:
    """Files under one location, named by keys relative to it (``"data/unit-00000001.parquet"``).

    Checks the location when created (one request on object storage: the bucket exists), so
    a bad ``--out`` fails before any work starts.
    """

    def __init__(self, location: str | os.PathLike):
        if is_url(location):
            self.location = str(location).rstrip("/")
            self.fs, self.root = _open_url(self.location)
        else:
            self.location = str(Path(location).resolve())
            self.fs, self.root = pafs.LocalFileSystem(), self.location
        self.is_local = isinstance(self.fs, pafs.LocalFileSystem)

    def __str__(self) -> str:
        return self.location

    def display(self, key: str = "") -> str:
        """The location of ``key`` as a user writes it (URL options kept at the end)."""
        if not key:
            return self.location
        if not is_url(self.location):
            return str(Path(self.location) / key)
        url = urlsplit(self.location)
        return urlunsplit(url._replace(path=f"{url.path.rstrip('/')}/{key}"))

    def path(self, key: str) -> str:
        """``key`` as a path on ``self.fs`` (what pyarrow readers take with ``filesystem=``)."""
        return f"{self.root}/{key}" if key else self.root

    def exists(self, key: str) -> bool:
        return self.fs.get_file_info(self.path(key)).type == pafs.FileType.File

    def read_bytes(self, key: str) -> bytes:
        with self.fs.open_input_stream(self.path(key)) as stream:
            return stream.read()

    def read_text(self, key: str) -> str:
        return self.read_bytes(key).decode()

    def write_bytes(self, key: str, data: bytes) -> None:
        if self.is_local:
            with atomic_path(self.path(key)) as tmp:
                tmp.write_bytes(data)
            return
        # one write then close: the object appears complete at close, or not at all
        with self.fs.open_output_stream(self.path(key)) as stream:
            stream.write(data)

    def write_text(self, key: str, text: str) -> None:
        if self.is_local:
            write_text_atomic(self.path(key), text)
        else:
            self.write_bytes(key, text.encode())

    def write_table(self, key: str, table: pa.Table) -> None:
        """One Parquet file per table, visible only once complete."""
        if self.is_local:
            with atomic_path(self.path(key)) as tmp:
                pq.write_table(table, tmp)
            return
        # serialized first: a failure while encoding must not leave a (valid, short) object
        buffer = pa.BufferOutputStream()
        pq.write_table(table, buffer)
        self.write_bytes(key, buffer.getvalue().to_pybytes())

    def write_file(self, key: str, local_path: str | os.PathLike) -> None:
        """Copy a local file to ``key``, streamed (it may be larger than memory).

        Local: written next to ``key`` and renamed. Object storage: a multipart upload, visible
        once complete; an upload cut short by a failure may leave a truncated object, so readers
        of large files check them (e.g. a Parquet footer) rather than trust their presence.
        """
        if self.is_local:
            with atomic_path(self.path(key)) as tmp:
                shutil.copyfile(local_path, tmp)
            return
        with open(local_path, "rb") as source, self.fs.open_output_stream(self.path(key)) as out:
            shutil.copyfileobj(source, out, length=8 << 20)

    def read_table(self, key: str, columns: list[str] | None = None) -> pa.Table:
        return pq.read_table(self.path(key), columns=columns, filesystem=self.fs)

    def list_names(self, directory: str, prefix: str = "", suffix: str = "") -> list[str]:
        """Sorted names of the files directly under ``directory`` (none if it is missing)."""
        selector = pafs.FileSelector(self.path(directory), allow_not_found=True)
        return sorted(
            info.base_name
            for info in self.fs.get_file_info(selector)
            if info.type == pafs.FileType.File
            and info.base_name.startswith(prefix)
            and info.base_name.endswith(suffix)
        )

    def delete(self, key: str) -> None:
        """Remove ``key``; a key that is already gone is fine.

        On S3, pyarrow keeps the emptied "directory" as a zero-byte marker object (its key ends
        in "/"); listings here skip it.
        """
        try:
            self.fs.delete_file(self.path(key))
        except FileNotFoundError:
            pass

    def is_empty(self) -> bool:
        """Nothing stored under the location (a missing local directory is empty)."""
        selector = pafs.FileSelector(self.root, allow_not_found=True)
        return not self.fs.get_file_info(selector)

    def make_dir(self, key: str) -> None:
        """Create a local directory; object storage has none (a prefix exists by its objects)."""
        if self.is_local:
            Path(self.path(key)).mkdir(parents=True, exist_ok=True)

    def dataset(self, keys: list[str], schema: pa.Schema | None = None) -> ds.Dataset:
        paths = [self.path(k) for k in keys]
        return ds.dataset(paths, schema=schema, format="parquet", filesystem=self.fs)


Location = str | os.PathLike | Storage  # a local directory, a URL, or storage already opened


def storage_of(location: Location) -> Storage:
    return location if isinstance(location, Storage) else Storage(location)


def locate_files(paths) -> list[tuple[pafs.FileSystem, str]]:
    """(file system, path on it) of each local path or URL; one file system per bucket."""
    systems: dict[tuple, Storage] = {}
    located = []
    for path in paths:
        if not is_url(path):
            located.append((pafs.LocalFileSystem(), str(Path(path).resolve())))
            continue
        url = urlsplit(str(path))
        if url.scheme == "file":  # no bucket: the URL's path is the local path
            located.append((pafs.LocalFileSystem(), url.path))
            continue
        bucket = url._replace(path="", fragment="")
        if bucket not in systems:
            systems[bucket] = Storage(urlunsplit(bucket))
        storage = systems[bucket]
        located.append((storage.fs, storage.path(url.path.strip("/"))))
    return located


def _open_url(location: str) -> tuple[pafs.FileSystem, str]:
    url = urlsplit(location)
    safe = urlunsplit(url._replace(netloc=url.hostname or "", query=""))
    if url.username or url.password:
        raise StorageError(
            f"{safe}: credentials in the URL are refused (they would be printed and logged); "
            "set them in the environment, e.g. AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        )
    try:
        filesystem, root = pafs.FileSystem.from_uri(_with_single_put(url))
    except pa.ArrowInvalid as err:
        if "Unrecognized filesystem type" in str(err):
            raise StorageError(
                f"{location}: unknown storage scheme {url.scheme!r}; use {SCHEMES}"
            ) from None
        raise StorageError(f"{location}: {err}") from None
    root = root.rstrip("/")
    if not isinstance(filesystem, pafs.LocalFileSystem):
        _check_bucket(location, filesystem, root.split("/")[0])
    return filesystem, root


def _with_single_put(url) -> str:
    """S3 with delayed open: an object smaller than a multipart part is sent in one PUT at
    close, instead of a multipart upload started when the stream opens."""
    if url.scheme != "s3":
        return urlunsplit(url)
    query = dict(parse_qsl(url.query))
    query.setdefault("allow_delayed_open", "true")
    return urlunsplit(url._replace(query=urlencode(query)))


def _check_bucket(location: str, filesystem: pafs.FileSystem, bucket: str) -> None:
    if not bucket:
        raise StorageError(f"{location}: the URL names no bucket; use {SCHEMES}")
    if filesystem.get_file_info(bucket).type != pafs.FileType.Directory:
        raise StorageError(
            f"{location}: bucket {bucket!r} does not exist (or these credentials cannot see it)"
        )
