"""crysray.storage on a local directory and on a real S3-compatible server (127.0.0.1)."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from crysray.storage import Storage, StorageError, locate_files


@pytest.fixture(params=["local", "file-url", "s3"])
def location(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "run")
    if request.param == "file-url":
        return f"file://{tmp_path}/run"
    return request.getfixturevalue("s3_bucket").url("campaigns/run")


def test_write_read_list_exists_delete(location):
    store = Storage(location)
    assert store.is_empty() and store.list_names("data") == []
    store.write_text("manifest.json", json.dumps({"seed": 1}))
    table = pa.table({"sample_id": ["0-0-0", "0-0-1"], "x": [1.0, 2.0]})
    for unit in (2, 0):
        store.write_table(f"data/unit-{unit:08d}.parquet", table)
    store.write_text("data/notes.txt", "not a unit")
    assert not store.is_empty()
    assert json.loads(store.read_text("manifest.json")) == {"seed": 1}
    assert store.list_names("data", "unit-", ".parquet") == [
        "unit-00000000.parquet",
        "unit-00000002.parquet",
    ]
    assert store.exists("data/unit-00000002.parquet") and not store.exists("data/unit-9.parquet")
    assert store.read_table("data/unit-00000000.parquet").equals(table)
    dataset = store.dataset(["data/unit-00000000.parquet", "data/unit-00000002.parquet"])
    assert dataset.to_table().num_rows == 4
    store.delete("data/unit-00000002.parquet")
    store.delete("data/unit-00000002.parquet")  # already gone: fine
    assert store.list_names("data", "unit-") == ["unit-00000000.parquet"]
    [(fs, path)] = locate_files([store.display("data/unit-00000000.parquet")])
    assert fs.get_file_info(path).size > 0


def test_a_local_write_leaves_no_temporary_file(tmp_path):
    store = Storage(tmp_path)
    store.write_table("data/unit-00000001.parquet", pa.table({"x": [1]}))
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["unit-00000001.parquet"]


def test_a_failed_table_write_leaves_nothing(location):
    store = Storage(location)
    with pytest.raises(AttributeError):  # not a table: fails while encoding
        store.write_table("data/unit-00000001.parquet", "not a table")
    assert store.list_names("data") == [] and not store.exists("data/unit-00000001.parquet")


def test_manifest_of_another_run_is_refused(location):
    from crysray.sample.campaign import CampaignSpec, RunDirectoryError, open_run

    spec = CampaignSpec("csp", "abc", "def", 30, 5, 7, 8, 8)
    assert open_run(location, spec) == [0, 1, 2, 3]
    assert open_run(location, spec) == [0, 1, 2, 3]  # the same run resumes
    before = Storage(location).read_text("manifest.json")
    with pytest.raises(RunDirectoryError, match="differs in: seed"):
        open_run(location, CampaignSpec("csp", "abc", "def", 30, 5, 8, 8, 8))
    assert Storage(location).read_text("manifest.json") == before


def test_foreign_files_are_refused(location):
    from crysray.sample.campaign import CampaignSpec, RunDirectoryError, open_run

    Storage(location).write_text("thesis.tex", "precious")
    with pytest.raises(RunDirectoryError, match="not a crysray sampling run"):
        open_run(location, CampaignSpec("csp", "abc", "def", 30, 5, 7, 8, 8))


def test_bad_urls_fail_with_one_clear_line(s3_bucket):
    cases = {
        "foo://bucket/run": "unknown storage scheme 'foo'",
        "s3://no-such-bucket-here/run": "bucket 'no-such-bucket-here' does not exist",
        "s3://AKIA:s3cr3t@" + s3_bucket.name + "/run": "credentials in the URL are refused",
        s3_bucket.url("run") + "?colour=blue": "Unexpected query parameter",
    }
    for url, message in cases.items():
        with pytest.raises(StorageError, match=message) as err:
            Storage(url)
        assert "s3cr3t" not in str(err.value) and "\n" not in str(err.value)


def test_urls_with_pyarrow_options_reach_the_same_objects(s3_bucket, monkeypatch):
    endpoint = s3_bucket.server.endpoint.removeprefix("http://")
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    url = s3_bucket.url("run") + f"?endpoint_override={endpoint}&scheme=http"
    store = Storage(url)
    store.write_text("manifest.json", "{}")
    assert store.display("manifest.json") == (
        s3_bucket.url("run/manifest.json") + f"?endpoint_override={endpoint}&scheme=http"
    )
    assert list(s3_bucket.objects("run")) == ["run/manifest.json"]
