"""An S3-compatible server on 127.0.0.1 for the tests and benchmarks (moto's, in a thread of
the calling process; moto comes with the ``test`` extra). Importable as ``s3_server`` by the
tests; benchmarks/bench_ray.py imports it from this folder.

``S3Server`` starts and stops it; ``S3Bucket`` is one fresh bucket on it, with the
environment a user would set (dummy keys, ``AWS_ENDPOINT_URL``) so that crysray, its job
subprocesses and their Ray workers all reach this server and nothing else.
"""

from __future__ import annotations

import logging
import uuid

import boto3
import pyarrow.fs as pafs
from moto.server import ThreadedMotoServer

DUMMY_KEYS = {"AWS_ACCESS_KEY_ID": "testing-key-id", "AWS_SECRET_ACCESS_KEY": "testing-secret"}


class S3Server:
    def __init__(self):
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)

    def __enter__(self) -> S3Server:
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one log line per request
        self.server.start()
        host, port = self.server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        return self

    def __exit__(self, *exc) -> None:
        self.server.stop()

    def environment(self) -> dict[str, str]:
        return {
            **DUMMY_KEYS,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_EC2_METADATA_DISABLED": "true",  # no instance-role lookups off the machine
            "AWS_CONFIG_FILE": "/dev/null",  # the user's own profiles play no part
            "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        }

    def client(self):
        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id=DUMMY_KEYS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=DUMMY_KEYS["AWS_SECRET_ACCESS_KEY"],
        )  # fmt: skip

    def new_bucket(self) -> S3Bucket:
        name = f"crysray-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return S3Bucket(self, name)


class S3Bucket:
    def __init__(self, server: S3Server, name: str):
        self.server = server
        self.name = name

    def url(self, prefix: str) -> str:
        return f"s3://{self.name}/{prefix}"

    def objects(self, prefix: str) -> dict[str, tuple[str, object]]:
        """key -> (ETag, LastModified) of every object under ``prefix``.

        Zero-byte "directory" markers (``prefix/attempts/``), which pyarrow's S3 file system
        leaves when it deletes the last file of a directory, are left out.
        """
        pages = self.server.client().get_paginator("list_objects_v2")
        return {
            o["Key"]: (o["ETag"], o["LastModified"])
            for page in pages.paginate(Bucket=self.name, Prefix=prefix.rstrip("/") + "/")
            for o in page.get("Contents", [])
            if not o["Key"].endswith("/")
        }

    def delete(self, key: str) -> None:
        self.server.client().delete_object(Bucket=self.name, Key=key)

    def filesystem(self) -> pafs.S3FileSystem:
        host = self.server.endpoint.removeprefix("http://")
        return pafs.S3FileSystem(
            access_key=DUMMY_KEYS["AWS_ACCESS_KEY_ID"],
            secret_key=DUMMY_KEYS["AWS_SECRET_ACCESS_KEY"],
            endpoint_override=host, scheme="http", region="us-east-1",
        )  # fmt: skip
