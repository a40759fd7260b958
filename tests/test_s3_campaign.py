"""Sampling, funnel and report on object storage: an S3-compatible server on 127.0.0.1."""

from __future__ import annotations

import json

import pytest
from s3_server import DUMMY_KEYS
from support import SHIPPED, run_job

from crysray.filter.campaign import read_decisions
from crysray.sample.schema import read_samples
from crysray.storage import Storage
from crysray.structures import rows_to_structures


def checked(result):
    """A job's result, once it is clear that the job printed no credentials."""
    for secret in DUMMY_KEYS.values():
        assert secret not in result.stdout + result.stderr
    return result


@pytest.fixture
def run(job):
    """A job as a user runs it, on the session's Ray instance; the environment (the test's S3
    endpoint and keys) is inherited."""
    return lambda script, *args, **kwargs: checked(job(script, *args, **kwargs))


def unit_objects(bucket, prefix: str) -> dict:
    return {k: v for k, v in bucket.objects(prefix).items() if "/data/unit-" in k}


def assert_exactly(bucket, prefix: str, n: int) -> None:
    keys = sorted(unit_objects(bucket, prefix))
    table = read_samples([f"s3://{bucket.name}/{k}" for k in keys])
    ids = table.column("sample_id").to_pylist()
    assert table.num_rows == n and len(set(ids)) == n
    assert sorted(int(i.split("-")[-1]) for i in ids) == list(range(n))


def assert_no_credentials_stored(bucket, prefix: str) -> None:
    store = Storage(bucket.url(prefix))
    for key in bucket.objects(prefix):
        data = store.read_bytes(key.removeprefix(prefix + "/"))
        assert not any(secret.encode() in data for secret in DUMMY_KEYS.values()), key


@pytest.mark.slow
def test_campaign_on_s3_is_exactly_once_resumes_and_refuses_other_runs(
    s3_bucket, tiny_checkpoint, formulas_file, run
):
    url = s3_bucket.url("run")
    args = ["--checkpoint", tiny_checkpoint, "--compositions", formulas_file, "--num-samples", 30,
            "--unit-size", 10, "--steps", 3, "--replicas", 2, "--out", url]  # fmt: skip
    first = run("mass_sample.py", *args)
    assert first.returncode == 0, first.stderr[-3000:]
    assert f"output            {url}/data" in first.stdout
    assert_exactly(s3_bucket, "run", 30)
    objects = s3_bucket.objects("run")
    assert sorted(objects) == ["run/compositions.parquet", "run/data/unit-00000000.parquet",
                               "run/data/unit-00000001.parquet", "run/data/unit-00000002.parquet",
                               "run/manifest.json"]  # fmt: skip
    assert_no_credentials_stored(s3_bucket, "run")

    again = run("mass_sample.py", *args)  # finished: nothing rewritten, nothing added
    assert again.returncode == 0, again.stderr[-3000:]
    assert "generated now     0" in again.stdout
    assert s3_bucket.objects("run") == objects  # same keys, ETags and modification times

    s3_bucket.delete("run/data/unit-00000001.parquet")
    restored = run("mass_sample.py", *args)
    assert restored.returncode == 0, restored.stderr[-3000:]
    assert "generated now     10" in restored.stdout
    assert_exactly(s3_bucket, "run", 30)
    after = s3_bucket.objects("run")
    assert sorted(after) == sorted(objects)
    for key in objects.keys() - {"run/data/unit-00000001.parquet"}:
        assert after[key] == objects[key]  # the other units were not touched

    other = run("mass_sample.py", *args[:-2], "--seed", 99, "--out", url)
    lines = other.stderr.strip().splitlines()
    assert other.returncode == 2 and len(lines) == 1, other.stderr[-3000:]
    assert lines[0].startswith("mass_sample: error:") and "differs in: seed" in lines[0]
    assert s3_bucket.objects("run") == after


@pytest.mark.parametrize(
    "url, message",
    [
        ("s3://no-such-bucket/run", "bucket 'no-such-bucket' does not exist"),
        ("ftp2://host/run", "unknown storage scheme 'ftp2'"),
        ("s3://AKIAEXAMPLE:testing-secret@bucket/run", "credentials in the URL are refused"),
    ],
)
def test_a_bad_out_url_fails_at_start_with_one_line(s3_bucket, tiny_checkpoint, url, message):
    result = checked(run_job("mass_sample.py", "--checkpoint", tiny_checkpoint, "--out", url,
                             timeout=300))  # fmt: skip
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith("mass_sample: error:") and message in lines[0]


def test_a_prefix_holding_other_files_is_refused(s3_bucket, tiny_checkpoint, formulas_file):
    Storage(s3_bucket.url("mine")).write_text("thesis.tex", "precious")
    args = ["--checkpoint", tiny_checkpoint, "--compositions", formulas_file]
    result = checked(run_job("mass_sample.py", *args, "--out", s3_bucket.url("mine"), timeout=300))
    assert result.returncode == 2 and "is not empty and is not a crysray sampling run" in (
        result.stderr
    )
    assert list(s3_bucket.objects("mine")) == ["mine/thesis.tex"]


@pytest.mark.slow
@pytest.mark.needs_shared
def test_funnel_and_report_read_and_write_an_s3_run(s3_bucket, run):
    url = s3_bucket.url("perov")
    sampled = run("mass_sample.py", "--checkpoint", SHIPPED, "--num-samples", 8,
                  "--unit-size", 4, "--out", url)  # fmt: skip
    assert sampled.returncode == 0, sampled.stderr[-3000:]
    args = ["--run", url, "--relax-steps", 20, "--hull", "local"]
    first = run("filter_stability.py", *args)
    assert first.returncode == 0, first.stderr[-3000:]
    assert json.loads(first.stdout)["units_filtered_now"] == 2
    store = Storage(url)
    summary = json.loads(store.read_text("funnel/_summary.json"))
    assert summary["total"] == 8
    funnel = [k for k in s3_bucket.objects("perov") if k.startswith("perov/funnel/unit-")]
    assert len(funnel) == 2
    unique = read_decisions(store)
    assert sorted(unique["sample_id"].to_pylist()) == sorted(
        read_samples([f"s3://{s3_bucket.name}/{k}" for k in unit_objects(s3_bucket, "perov")])
        .column("sample_id")
        .to_pylist()
    )
    funnel_objects = {k: v for k, v in s3_bucket.objects("perov").items() if "/funnel/" in k}
    again = run("filter_stability.py", *args)
    assert again.returncode == 0 and json.loads(again.stdout)["units_filtered_now"] == 0
    unchanged = {k: v for k, v in s3_bucket.objects("perov").items() if "/funnel/unit-" in k}
    assert unchanged == {k: v for k, v in funnel_objects.items() if "/funnel/unit-" in k}

    report = run("report.py", "--run", url)
    assert report.returncode == 0, report.stderr[-3000:]
    data = json.loads(store.read_text("report.json"))
    assert data["crystals"] == 8 and data["funnel"]["total"] == 8 and data["run"] == url
    for png in data["plots"]:
        assert store.read_bytes(png)[:4] == b"\x89PNG"
    assert_no_credentials_stored(s3_bucket, "perov")
    unit = s3_bucket.url("perov/data/unit-00000000.parquet")
    structures = rows_to_structures(read_samples([unit]))
    assert len(structures) == 4
