"""The train stage: open_clip launched on a tiny synthetic WebDataset shard (CPU, wit-tiny)."""
from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from pipeline.errors import WitError
from training import train as T

COLORS = {"red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 60, 220), "yellow": (240, 220, 30)}


def write_shards(shards: Path, n: int = 64, per_shard: int = 64) -> None:
    """img2dataset-style shards of solid-colour squares with captions, plus sizes.json."""
    import webdataset as wds

    shards.mkdir(parents=True, exist_ok=True)
    sizes: dict[str, int] = {}
    names = list(COLORS)
    for start in range(0, n, per_shard):
        name = f"{start // per_shard:05d}.tar"
        with wds.TarWriter(str(shards / name)) as sink:
            for i in range(start, min(n, start + per_shard)):
                colour = names[i % len(names)]
                buf = io.BytesIO()
                Image.new("RGB", (40, 40), COLORS[colour]).save(buf, "JPEG")
                caption = f"a {colour} square on a grey background"
                sink.write({"__key__": f"{i:09d}", "jpg": buf.getvalue(), "txt": caption,
                            "json": json.dumps({"caption": caption, "key": f"{i:09d}"}).encode()})
        sizes[name] = min(n, start + per_shard) - start
    (shards / "sizes.json").write_text(json.dumps(sizes))


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("wds") / "shards"
    write_shards(path)
    return path


def quiet(line: str) -> None:
    """Swallow open_clip's output (pytest -s would otherwise show it all)."""


FAST = dict(batch_size=32, warmup=1, workers=1, model="wit-tiny", precision="fp32", device="cpu")


def test_train_then_resume_then_skip(shards: Path, tmp_path: Path) -> None:
    out = tmp_path / "train"
    first = T.run_train(shards, out, T.TrainConfig(epochs=1, **FAST), echo=quiet)
    assert Path(first.checkpoint) == out / "wit" / "checkpoints" / "epoch_1.pt"
    assert Path(first.checkpoint).is_file()
    assert (first.model, first.epochs, first.steps, first.samples) == ("wit-tiny", 1, 2, 64)
    assert first.start_epoch == 0 and not first.skipped
    assert first.final_loss is not None and first.final_loss > 0
    records = T.read_results(out)
    assert len(records) == 1 and records[0]["checkpoint"] == first.checkpoint

    # Same folder, more epochs: open_clip resumes from epoch 1 instead of refusing.
    second = T.run_train(shards, out, T.TrainConfig(epochs=2, **FAST), echo=quiet)
    assert Path(second.checkpoint).name == "epoch_2.pt" and Path(second.checkpoint).is_file()
    assert second.start_epoch == 1 and second.steps == 4
    assert len(T.read_results(out)) == 2

    # Finished: a re-run is skipped without launching open_clip.
    third = T.run_train(shards, out, T.TrainConfig(epochs=2, **FAST), echo=quiet)
    assert third.skipped and third.checkpoint == second.checkpoint and third.final_loss == second.final_loss
    assert len(T.read_results(out)) == 2

    assert T.latest_checkpoint(out) == (second.checkpoint, "wit-tiny")

    # Fewer epochs than trained: the earlier epoch's checkpoint is reused, or the run refuses.
    assert T.run_train(shards, out, T.TrainConfig(epochs=1, **FAST), echo=quiet).checkpoint == first.checkpoint
    Path(first.checkpoint).unlink()
    with pytest.raises(WitError, match="already trained to epoch 2"):
        T.run_train(shards, out, T.TrainConfig(epochs=1, **FAST), echo=quiet)


def test_failed_open_clip_run_is_one_line_error(shards: Path, tmp_path: Path) -> None:
    cfg = T.TrainConfig(epochs=1, **{**FAST, "model": "no-such-model"})
    with pytest.raises(WitError, match="no final checkpoint") as err:
        T.run_train(shards, tmp_path / "train", cfg, echo=quiet)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "train" / T.RESULTS_FILE).exists()


def test_missing_shards_and_sizes(tmp_path: Path) -> None:
    with pytest.raises(WitError, match="no epoch_<n>.pt checkpoint"):
        T.latest_checkpoint(tmp_path)
    with pytest.raises(WitError, match="shards folder not found"):
        T.run_train(tmp_path / "nope", tmp_path / "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(WitError, match="sizes.json"):
        T.run_train(tmp_path / "empty", tmp_path / "train")
    (tmp_path / "empty" / "sizes.json").write_text('{"00000.tar": 5}')
    with pytest.raises(WitError, match="00000.tar: listed in sizes.json but missing"):
        T.run_train(tmp_path / "empty", tmp_path / "train")
    with pytest.raises(WitError, match="epochs must be at least 1"):
        T.run_train(tmp_path / "empty", tmp_path / "train", T.TrainConfig(epochs=0))
    (tmp_path / "empty" / "sizes.json").write_text("{}")
    with pytest.raises(WitError, match="no samples"):
        T.read_shards(tmp_path / "empty")


def test_shard_pattern_and_steps(tmp_path: Path) -> None:
    base = str(tmp_path.resolve())
    assert T.shard_pattern(tmp_path, ["00000.tar"]) == f"{base}/00000.tar"
    assert T.shard_pattern(tmp_path, ["00000.tar", "00001.tar", "00002.tar"]) == f"{base}/{{00000..00002}}.tar"
    assert T.shard_pattern(tmp_path, ["00000.tar", "00002.tar"]) == f"{base}/{{00000,00002}}.tar"
    assert T.batches_per_epoch(700, 64, 1) == 11
    assert T.batches_per_epoch(700, 64, 2) == 12  # rounded up to whole shares per worker
    assert T.batches_per_epoch(10, 64, 1) == 1


def test_auto_choices_and_args(tmp_path: Path) -> None:
    cfg = T.TrainConfig(extra_args=["--grad-clip-norm", "1.0"])
    assert T.resolve_auto(cfg, cuda=True) == ("ViT-B-32", "amp_bf16", "cuda")
    assert T.resolve_auto(cfg, cuda=False) == ("wit-tiny", "fp32", "cpu")
    args = T.open_clip_args("x/{00000..00001}.tar", 700, tmp_path, cfg, "wit-tiny", "fp32", "cpu", 1)
    assert args[args.index("--train-num-samples") + 1] == "700"
    assert args[args.index("--resume") + 1] == "latest" and "--save-most-recent" in args
    assert args[-2:] == ["--grad-clip-norm", "1.0"]


def test_parse_loss() -> None:
    line = ("2026-01-01,00:00:00 | INFO | Train Epoch: 0 [704/704 (100%)] Data (t): 0.002 LR: 0.000733 "
            "Logit Scale: 14.268 Contrastive_loss: 3.3267 (3.7999) Loss: 3.3267 (3.7999)")
    assert T.parse_loss(line) == pytest.approx(3.7999)
    assert T.parse_loss("Start epoch 0") is None
