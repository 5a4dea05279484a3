"""Bad input to the dedup stages ends as one line naming the file or value at fault (a WitError), never a
traceback or a write outside the output folder: eval-set names that are not plain folder names, corrupt or
foreign eval indexes, unreadable parquet eval sets and shard metadata."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from dedup.index import INDEX_FILE, META_VARIANTS, build_eval_index, load_eval_index, load_hash_index, \
    load_robust_index
from dedup.run import resolve_indexes, run_dedup
from pipeline.core.errors import WitError

REPO = Path(__file__).resolve().parents[2]
BAD_NAMES = ["../../escaped", "..", ".", "a/b", "a\\b", "", "x" * 65, "name\n", "spa ce", "näme", "/abs/x"]
GOOD_NAMES = ["cifar10", "imagenet-1k", "a.b_c-D", "x" * 64, "..a", "a.."]


def jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((96, 72), Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """A three-image ImageFolder."""
    root = tmp_path / "images"
    for i, label in enumerate(["cat", "cat", "dog"]):
        (root / label).mkdir(parents=True, exist_ok=True)
        (root / label / f"{i}.jpg").write_bytes(jpeg(i))
    return root


@pytest.fixture
def index(images: Path, tmp_path: Path) -> Path:
    """A good eval index folder, ``eval/toy``."""
    build_eval_index("toy", images, tmp_path / "eval")
    return tmp_path / "eval" / "toy"


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def one_line(exc: pytest.ExceptionInfo[WitError]) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------- eval-set names

def test_name_rules() -> None:
    from dedup.index import check_eval_name

    for name in GOOD_NAMES:
        assert check_eval_name(name) == name
    for name in BAD_NAMES:
        with pytest.raises(WitError) as exc:
            check_eval_name(name)
        assert repr(name) in one_line(exc)


def test_build_eval_index_refuses_names_that_leave_out(images: Path, tmp_path: Path) -> None:
    out = tmp_path / "work" / "eval"
    build_eval_index("kept", images, out)  # an index that must survive
    before = tree(tmp_path)
    for name in [*BAD_NAMES, str(tmp_path / "abs")]:
        with pytest.raises(WitError) as exc:
            build_eval_index(name, images, out)
        assert repr(name) in one_line(exc)
        assert tree(tmp_path) == before, name


def write_shard(path: Path, seeds: list[int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for seed in seeds:
            for name, data in ((f"{seed:06d}.jpg", jpeg(seed)), (f"{seed:06d}.txt", b"a caption")):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_dedup_refuses_bad_names(images: Path, tmp_path: Path) -> None:
    write_shard(tmp_path / "shards" / "00000.tar", [0, 7])
    before = tree(tmp_path)
    for name in ["../../escaped", "..", "a/b"]:
        with pytest.raises(WitError) as exc:
            run_dedup(tmp_path / "shards", {name: images}, tmp_path / "work" / "out")
        assert repr(name) in one_line(exc)
        with pytest.raises(WitError):
            resolve_indexes({name: images}, tmp_path / "work" / "out", 8)
        assert tree(tmp_path) == before, name


def test_cli_eval_index_bad_name_is_one_line(images: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    before = tree(tmp_path)
    run = subprocess.run([sys.executable, "-m", "flows.cli", "eval-index", "../../escaped", str(images),
                          "--out", str(work / "eval")], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert run.returncode != 0
    assert run.stdout == ""
    assert run.stderr.splitlines() == [run.stderr.strip()]  # one line, no traceback
    assert run.stderr.startswith("wit eval-index: error: ") and "'../../escaped'" in run.stderr
    assert tree(tmp_path) == before


# ---------------------------------------------------------------- corrupt or foreign eval indexes

def truncate(file: Path) -> None:
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])


def garbage(file: Path) -> None:
    file.write_bytes(np.random.default_rng(0).bytes(2000))


def empty(file: Path) -> None:
    file.write_bytes(b"")


def damaged_pages(file: Path) -> None:
    """The footer (schema) intact, the data pages overwritten."""
    data = bytearray(file.read_bytes())
    data[4:len(data) // 2] = bytes(len(data) // 2 - 4)
    file.write_bytes(bytes(data))


def rewrite(change: Callable[[pa.Table], pa.Table]) -> Callable[[Path], None]:
    def corrupt(file: Path) -> None:
        pq.write_table(change(pq.read_table(file)), file)

    corrupt.__name__ = change.__name__
    return corrupt


def no_phash(table: pa.Table) -> pa.Table:
    return table.drop_columns(["phash"])


def text_phash(table: pa.Table) -> pa.Table:
    return table.set_column(2, "phash", table["phash"].cast(pa.string()))


def null_phash(table: pa.Table) -> pa.Table:
    return table.set_column(2, "phash", pa.array([None] + table["phash"].to_pylist()[1:], pa.int64()))


def null_eval_id(table: pa.Table) -> pa.Table:
    return table.set_column(0, "eval_id", pa.array([None] + table["eval_id"].to_pylist()[1:], pa.string()))


CORRUPTIONS = [truncate, garbage, empty, damaged_pages, rewrite(no_phash), rewrite(text_phash),
               rewrite(null_phash), rewrite(null_eval_id)]


@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("load", [load_eval_index, load_hash_index, load_robust_index], ids=lambda f: f.__name__)
def test_corrupt_index_is_one_line_naming_the_file(index: Path, corrupt: Callable[[Path], None],
                                                   load: Callable[[Path], object]) -> None:
    file = index / INDEX_FILE
    corrupt(file)
    with pytest.raises(WitError) as exc:
        load(index)
    assert str(file) in one_line(exc)


def variants_meta(value: bytes | None) -> Callable[[Path], None]:
    def corrupt(file: Path) -> None:
        table = pq.read_table(file)
        meta = dict(table.schema.metadata)
        if value is None:
            del meta[META_VARIANTS]
        else:
            meta[META_VARIANTS] = value
        pq.write_table(table.replace_schema_metadata(meta), file)

    return corrupt


@pytest.mark.parametrize("corrupt", [variants_meta(None), variants_meta(b"{not json"), variants_meta(b'"x"'),
                                     rewrite(lambda t: t.drop_columns(["variant_dct"])),
                                     rewrite(lambda t: t.set_column(3, "variant_phash", pa.array(
                                         [[None] * len(v) for v in t["variant_phash"].to_pylist()],
                                         pa.list_(pa.int64()))))],
                         ids=["no-variant-names", "variant-names-not-json", "variant-names-not-a-list",
                              "no-variant_dct", "null-variant-hashes"])
def test_corrupt_variants_are_one_line(index: Path, corrupt: Callable[[Path], None]) -> None:
    file = index / INDEX_FILE
    corrupt(file)
    with pytest.raises(WitError) as exc:
        load_robust_index(index)
    assert str(file) in one_line(exc)


def test_dedup_with_corrupt_index_is_one_line(index: Path, tmp_path: Path) -> None:
    write_shard(tmp_path / "shards" / "00000.tar", [0, 7])
    truncate(index / INDEX_FILE)
    with pytest.raises(WitError) as exc:
        run_dedup(tmp_path / "shards", {"toy": index}, tmp_path / "out")
    assert str(index / INDEX_FILE) in one_line(exc)


# ---------------------------------------------------------------- unreadable parquet inputs

@pytest.mark.parametrize("corrupt", [truncate, garbage, damaged_pages], ids=lambda c: c.__name__)
def test_corrupt_parquet_eval_set_is_one_line(tmp_path: Path, corrupt: Callable[[Path], None]) -> None:
    file = tmp_path / "evalset.parquet"
    pq.write_table(pa.table({"image": [jpeg(i) for i in range(3)], "label": ["a", "b", "c"]}), file)
    corrupt(file)
    with pytest.raises(WitError) as exc:
        build_eval_index("p", file, tmp_path / "eval")
    assert str(file) in one_line(exc)
    assert not (tmp_path / "eval").exists()


def test_corrupt_shard_parquet_is_one_line(index: Path, tmp_path: Path) -> None:
    write_shard(tmp_path / "shards" / "00000.tar", [0, 7])
    meta = tmp_path / "shards" / "00000.parquet"
    meta.write_bytes(b"PAR1 not really parquet")
    with pytest.raises(WitError) as exc:
        run_dedup(tmp_path / "shards", {"toy": index}, tmp_path / "out")
    assert str(meta) in one_line(exc)


def test_corrupt_hash_cache_is_rebuilt(index: Path, tmp_path: Path) -> None:
    """``OUT/_hashes`` is dedup's own cache: a damaged entry is recomputed, not an error."""
    write_shard(tmp_path / "shards" / "00000.tar", [0, 7])
    first = run_dedup(tmp_path / "shards", {"toy": index}, tmp_path / "out")
    garbage(tmp_path / "out" / "_hashes" / "00000.parquet")
    again = run_dedup(tmp_path / "shards", {"toy": index}, tmp_path / "out")
    assert (again.inputs, again.kept, again.extra["flagged_samples"]) == \
        (first.inputs, first.kept, first.extra["flagged_samples"]) == (2, 2, 1)
