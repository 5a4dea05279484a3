"""Folder: one interface for a build folder on a local disk and on an fsspec store; commit markers go last."""
from __future__ import annotations

import uuid

import pytest

from pipeline.core.lock import lock_path, output_lock
from pipeline.core.parts import PartStore
from pipeline.core.stats import StageStats
from pipeline.core.storage import Folder, is_marker


@pytest.fixture(params=["local", "memory"])
def folder(request, tmp_path) -> Folder:
    if request.param == "local":
        return Folder(tmp_path / "build")
    return Folder(f"memory://wit-test-{uuid.uuid4().hex[:8]}/build")


def test_write_read_list(folder: Folder) -> None:
    folder.write_json("a/x.json", {"n": 1})
    folder.write_bytes("a/y.bin", b"abc")
    assert folder.read_json("a/x.json") == {"n": 1} and folder.read_bytes("a/y.bin") == b"abc"
    assert folder.names("a") == ["x.json", "y.bin"] and folder.names("a", "*.bin") == ["y.bin"]
    assert folder.names("missing") == [] and not folder.exists("a/z")
    assert folder.tree() == ["a/x.json", "a/y.bin"]
    folder.remove("a/x.json")
    assert folder.names("a") == ["y.bin"]
    folder.remove("a", recursive=True)
    assert folder.tree() == []


def test_missing_file_is_file_not_found(folder: Folder) -> None:
    with pytest.raises(FileNotFoundError, match="nope.json"):
        folder.read_json("nope.json")


def test_staging_publishes_markers_last(folder: Folder, monkeypatch) -> None:
    order: list[str] = []
    real_put = Folder.put
    monkeypatch.setattr(Folder, "put", lambda self, local, name: (order.append(name), real_put(self, local, name)))
    with folder.staging() as stage:
        (stage / "_parts").mkdir()
        (stage / "_parts" / "p.stats.json").write_text("{}")
        (stage / "p.parquet").write_bytes(b"data")
        (stage / "00000_stats.json").write_text("{}")
        (stage / "00000.tar").write_bytes(b"tar")
    assert order[:2] == ["00000.tar", "p.parquet"] and set(order[2:]) == {"00000_stats.json", "_parts/p.stats.json"}
    assert folder.read_bytes("p.parquet") == b"data"


def test_staging_publishes_nothing_on_error(folder: Folder) -> None:
    with pytest.raises(RuntimeError), folder.staging() as stage:
        (stage / "p.parquet").write_bytes(b"half")
        raise RuntimeError("killed")
    assert not folder.exists("p.parquet")
    assert [n for n in folder.tree() if not n.startswith(".tmp-")] == []


def test_part_store_and_stats_on_a_store(folder: Folder) -> None:
    store = PartStore(folder, "filter")
    assert store.key_of("p.parquet") is None
    store.record("p.parquet", "k1", StageStats("filter", inputs=3, kept=2))
    assert store.finished("p.parquet", "k1") and not store.finished("p.parquet", "k2")
    assert not store.finished("p.parquet", "k1", ["p.parquet"])  # the output itself is missing
    store.total(["p.parquet"]).write(folder)
    assert StageStats.read(folder).kept == 2


def test_markers() -> None:
    assert is_marker("_parts/a.stats.json") and is_marker("x/_parts/a.json") and is_marker("00001_stats.json")
    assert not is_marker("00001.tar") and not is_marker("kept/a.parquet")


def test_lock_of_a_store_folder_is_local(tmp_path) -> None:
    url = f"s3://bucket/{uuid.uuid4().hex}"
    assert lock_path(url).parent.is_absolute() and "s3:" not in str(lock_path(url))
    with output_lock(url, "filter"):
        with pytest.raises(Exception, match="in use"), output_lock(url + "/", "filter"):
            pass


def test_a_store_failure_is_one_line_and_transient(monkeypatch) -> None:
    """A store that refuses a request is a WitError (one line naming the object) and an OSError (Ray retries
    the task); a missing object stays FileNotFoundError."""
    from pipeline.core.errors import StoreError, WitError

    folder = Folder(f"memory://wit-test-{uuid.uuid4().hex[:8]}/build")

    def refuse(path: str) -> bytes:
        raise PermissionError("Access Denied\nRequest id: 42")

    monkeypatch.setattr(folder.fs, "cat_file", refuse)
    with pytest.raises(StoreError) as info:
        folder.read_json("x.json")
    assert isinstance(info.value, WitError) and isinstance(info.value, OSError)
    assert str(info.value) == f"{folder.loc('x.json')}: PermissionError: Access Denied"


@pytest.mark.parametrize("call", ["remove", "tree", "names", "write_bytes", "exists"])
def test_every_store_call_fails_in_one_line(monkeypatch, call: str) -> None:
    """An unreachable endpoint, whatever the operation: StoreError naming the object, never a traceback."""
    from pipeline.core.errors import StoreError

    folder = Folder(f"memory://wit-test-{uuid.uuid4().hex[:8]}/build")

    def unreachable(*args, **kwargs):
        raise ConnectionError("Could not connect to the endpoint URL")

    for method in ("rm", "find", "ls", "pipe_file", "exists"):
        monkeypatch.setattr(folder.fs, method, unreachable)
    args = {"remove": ("_work",), "tree": ("_work",), "names": ("_work",), "write_bytes": ("a", b"x"),
            "exists": ("a",)}[call]
    with pytest.raises(StoreError, match=r"memory://.*/build/(_work|a).*Could not connect"):
        getattr(folder, call)(*args)


def test_push_copies_a_tree_markers_last_and_keeps_it(folder: Folder, tmp_path, monkeypatch) -> None:
    local = tmp_path / "train"
    (local / "exp" / "checkpoints").mkdir(parents=True)
    (local / "exp" / "checkpoints" / "epoch_1.pt").write_bytes(b"w")
    (local / "_stats.json").write_text("{}")
    order: list[str] = []
    real_put = Folder.put
    monkeypatch.setattr(Folder, "put", lambda self, src, name, keep=False: (order.append(name),
                                                                           real_put(self, src, name, keep)))
    folder.push(local, "train")
    assert order == ["exp/checkpoints/epoch_1.pt", "_stats.json"]
    assert folder.read_bytes("train/exp/checkpoints/epoch_1.pt") == b"w" and (local / "_stats.json").is_file()
