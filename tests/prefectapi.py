"""Reading a Prefect server back in tests."""
from __future__ import annotations


def read_artifacts(keys: list[str]) -> dict[str, dict]:
    """The latest artifact of each key, read back from the Prefect API (a plain filter request: in this
    Prefect version the client's read_artifacts sends nulls or run filters that hide flow-run artifacts)."""
    from prefect.client.orchestration import get_client

    body = {"artifacts": {"key": {"any_": keys}}, "sort": "CREATED_DESC", "limit": 50, "offset": 0}
    with get_client(sync_client=True) as client:
        found = client.request("POST", "/artifacts/filter", json=body).json()
    latest: dict[str, dict] = {}
    for artifact in found:
        latest.setdefault(artifact["key"], artifact)
    return latest
