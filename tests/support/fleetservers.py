"""The fleet tier's real servers on loopback: ``redis-server`` and moto's standalone S3
server (``moto_server``), each on a free port, stopped (and its data gone) at the end."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import boto3
import redis

from tests.support.net import free_port
from tests.support.stopping import StopsOnExit, terminate

# moto accepts any credentials; goblet reads them from the environment like any AWS client.
AWS_ENV = {"AWS_ACCESS_KEY_ID": "fleet-test-key", "AWS_SECRET_ACCESS_KEY": "fleet-test-secret",
           "AWS_DEFAULT_REGION": "us-east-1"}


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), 0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port}")


class _Server(StopsOnExit):
    proc: subprocess.Popen[bytes] | None = None
    port = 0

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL)."""
        if self.proc is not None:
            terminate(self.proc)

    def kill(self) -> None:
        """SIGKILL, as a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


class RedisServer(_Server):
    """``redis-server`` on 127.0.0.1, in memory only."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        """Start it (on a new port the first time, the same port after a ``stop``)."""
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        self.proc = subprocess.Popen(
            [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir), "--protected-mode", "yes"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        _wait_port(self.port, self.proc, "redis-server")
        return self

    def dump(self) -> dict[str, bytes]:
        """Every key and its value (strings; other types as their type name)."""
        client = redis.Redis(host="127.0.0.1", port=self.port)
        out: dict[str, bytes] = {}
        for key in client.scan_iter():
            kind = client.type(key)
            out[key.decode()] = client.get(key) if kind == b"string" else kind
        client.close()
        return out

    def __enter__(self) -> RedisServer:
        return self.start()


class S3Server(_Server):
    """moto's S3-compatible server on 127.0.0.1 with one bucket."""

    def __init__(self, bucket: str = "goblet-fleet") -> None:
        self.bucket = bucket

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> Any:
        """A boto3 S3 client for the server (test credentials)."""
        return boto3.session.Session(
            aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"],
            region_name=AWS_ENV["AWS_DEFAULT_REGION"]).client("s3", endpoint_url=self.endpoint)

    def start(self) -> S3Server:
        """Start moto_server and create the bucket."""
        binary = Path(sys.executable).parent / "moto_server"
        self.port = free_port()
        env = {k: v for k, v in os.environ.items()
               if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
        self.proc = subprocess.Popen(
            [str(binary if binary.exists() else "moto_server"), "-H", "127.0.0.1", "-p",
             str(self.port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL, env=env)
        _wait_port(self.port, self.proc, "moto_server")
        self.client().create_bucket(Bucket=self.bucket)
        return self

    def objects(self) -> dict[str, bytes]:
        """Every object in the bucket with its bytes."""
        c = self.client()
        out: dict[str, bytes] = {}
        for page in c.get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
            for item in page.get("Contents", []):
                out[item["Key"]] = c.get_object(Bucket=self.bucket, Key=item["Key"])["Body"].read()
        return out

    def __enter__(self) -> S3Server:
        return self.start()
