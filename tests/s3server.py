"""An S3 API server on 127.0.0.1 (moto) with one bucket, the environment pointing s3fs and boto3 at it."""
from __future__ import annotations

import contextlib
import os
import socket
from typing import Any, Iterator


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clear_s3fs_cache() -> None:
    """fsspec reuses one S3 filesystem per set of options, whatever endpoint the environment names now."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()


@contextlib.contextmanager
def s3_server(bucket: str) -> Iterator[Any]:
    """Yield a boto3 client of a fresh server on 127.0.0.1 holding an empty ``bucket``; all undone after."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "wit", "AWS_SECRET_ACCESS_KEY": "wit",
           "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    clear_s3fs_cache()
    try:
        client = boto3.client("s3")
        client.create_bucket(Bucket=bucket)
        yield client
    finally:
        clear_s3fs_cache()
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
