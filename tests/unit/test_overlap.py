"""The overlap stage: statistics checked against hand computations, the split, and zero-shot plumbing."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from scipy.stats import beta

from pipeline.core.errors import WitError
from training.eval import overlap as O
from training.eval import zeroshot as Z


def binom_tail(k: int, n: int, p: float) -> float:
    """P(X >= k), X ~ Binomial(n, p), summed by hand."""
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))


# ---------------------------------------------------------------- statistics

@pytest.mark.parametrize("k,n,p", [(3, 4, 0.5), (7, 10, 0.6), (0, 5, 0.3), (5, 5, 0.9), (12, 20, 0.25)])
def test_binomial_p_greater_matches_hand_sum(k: int, n: int, p: float) -> None:
    assert O.binomial_p_greater(k, n, p) == pytest.approx(binom_tail(k, n, p), rel=1e-9)


def test_binomial_p_greater_small_case_by_hand() -> None:
    # 3 of 4 right when the clean accuracy is 1/2: P(X >= 3) = (4 + 1) / 16.
    assert O.binomial_p_greater(3, 4, 0.5) == pytest.approx(5 / 16)
    assert O.binomial_p_greater(0, 4, 0.5) == pytest.approx(1.0)


@pytest.mark.parametrize("k,n", [(3, 10), (1, 7), (18, 20), (50, 100)])
def test_clopper_pearson_matches_beta_quantiles(k: int, n: int) -> None:
    alpha = 1 - 0.995
    low, high = O.clopper_pearson(k, n, 0.995)
    assert low == pytest.approx(beta.ppf(alpha / 2, k, n - k + 1), rel=1e-6)
    assert high == pytest.approx(beta.ppf(1 - alpha / 2, k + 1, n - k), rel=1e-6)


def test_clopper_pearson_edges_closed_form() -> None:
    # k = 0: upper bound solves (1 - p)^n = alpha/2; k = n: lower bound solves p^n = alpha/2.
    n, half = 8, (1 - 0.995) / 2
    assert O.clopper_pearson(0, n) == pytest.approx((0.0, 1 - half ** (1 / n)))
    assert O.clopper_pearson(n, n) == pytest.approx((half ** (1 / n), 1.0))
    with pytest.raises(ValueError):
        O.clopper_pearson(0, 0)


def test_split_ids() -> None:
    overlap, clean = O.split_ids(["a", "b", "c", "d"], {"d", "b", "zz"})
    assert overlap == ["b", "d"] and clean == ["a", "c"]


def test_overlap_stats_by_hand() -> None:
    # 10 images; overlap = 4 of which 3 correct, clean = 6 of which 3 correct.
    correct = {f"c/{i}.jpg": ok for i, ok in enumerate([1, 1, 1, 0, 1, 1, 1, 0, 0, 0])}
    stats = O.overlap_stats(correct, ["c/0.jpg", "c/1.jpg", "c/2.jpg", "c/3.jpg", "other/9.jpg"])
    assert (stats["n_all"], stats["n_overlap"], stats["n_clean"]) == (10, 4, 6)
    assert stats["acc_all"] == pytest.approx(0.6)
    assert stats["acc_clean"] == pytest.approx(0.5)
    assert stats["acc_overlap"] == pytest.approx(0.75)
    assert stats["delta"] == pytest.approx(0.1)
    assert stats["p_value"] == pytest.approx(5 / 16)
    assert stats["overlap_pct"] == pytest.approx(40.0)
    assert (stats["ci_low"], stats["ci_high"]) == pytest.approx(
        (beta.ppf(0.0025, 3, 2), beta.ppf(0.9975, 4, 1)))


def test_overlap_stats_empty_subsets_are_null() -> None:
    correct = {"a": True, "b": False}
    none_flagged = O.overlap_stats(correct, [])
    assert none_flagged["n_overlap"] == 0 and none_flagged["acc_overlap"] is None
    assert none_flagged["p_value"] is None and none_flagged["ci_low"] is None and none_flagged["ci_high"] is None
    assert none_flagged["delta"] == 0.0 and none_flagged["overlap_pct"] == 0.0
    all_flagged = O.overlap_stats(correct, ["a", "b"])
    assert all_flagged["acc_clean"] is None and all_flagged["delta"] is None and all_flagged["p_value"] is None
    assert all_flagged["acc_overlap"] == 0.5 and all_flagged["overlap_pct"] == 100.0
    empty = O.overlap_stats({}, ["a"])
    assert empty["n_all"] == 0 and empty["acc_all"] is None and empty["overlap_pct"] is None


def test_top5_and_per_class_by_hand() -> None:
    # 8 images of 2 classes; overlap = a/0, a/1, b/0. Top-1: a/0 a/1 a/2 b/1 right; top-5 adds a/3 and b/0, b/2.
    rows = [{"eval_id": f"{c}/{i}", "label": c, "correct": ok1, "top5_correct": ok5}
            for c, i, ok1, ok5 in [("a", 0, 1, 1), ("a", 1, 1, 1), ("a", 2, 1, 1), ("a", 3, 0, 1),
                                    ("b", 0, 0, 1), ("b", 1, 1, 1), ("b", 2, 0, 1), ("b", 3, 0, 0)]]
    stats = O.eval_set_stats(rows, {"a/0", "a/1", "b/0"})
    assert (stats["n_all"], stats["n_overlap"], stats["n_clean"]) == (8, 3, 5)
    assert (stats["acc_all"], stats["acc_overlap"], stats["acc_clean"]) == pytest.approx((4 / 8, 2 / 3, 2 / 5))
    top5 = stats["top5"]
    # top-5: overlap 3/3, clean 4/5 (b/3 missed), all 7/8
    assert (top5["acc_all"], top5["acc_overlap"], top5["acc_clean"]) == pytest.approx((7 / 8, 1.0, 4 / 5))
    assert top5["delta"] == pytest.approx(7 / 8 - 4 / 5)
    assert top5["p_value"] == pytest.approx(0.8 ** 3)  # P(X >= 3), X ~ Bin(3, 0.8)
    assert (top5["ci_low"], top5["ci_high"]) == pytest.approx(((0.0025) ** (1 / 3), 1.0))  # k = n closed form
    per_class = stats["per_class"]
    assert per_class["a"] == {"n_all": 4, "n_overlap": 2, "acc_all": 0.75, "acc_clean": 0.5, "acc_overlap": 1.0,
                              "acc5_all": 1.0}
    assert per_class["b"] == {"n_all": 4, "n_overlap": 1, "acc_all": 0.25, "acc_clean": pytest.approx(1 / 3),
                              "acc_overlap": 0.0, "acc5_all": 0.75}
    text = O.markdown_table({"set": stats})
    assert "## Top-5 accuracy" in text and "| set | 87.5 | 80.0 | 100.0 | 7.50 | 0.512 |" in text
    assert "## Per class: set" in text and "| b | 4 | 1 | 25.0 | 33.3 | 0.0 | 75.0 |" in text


def test_plot_and_delta_interval_by_hand(tmp_path: Path) -> None:
    from training.eval import plots as P

    r = O.overlap_stats({f"c/{i}.jpg": ok for i, ok in enumerate([1, 1, 1, 0, 1, 1, 1, 0, 0, 0])},
                        ["c/0.jpg", "c/1.jpg", "c/2.jpg", "c/3.jpg"])
    low, high = P.delta_interval(r)  # f = 0.4: All - Clean = 0.4 * (acc_overlap - acc_clean)
    assert (low, high) == pytest.approx((0.4 * (r["ci_low"] - 0.5), 0.4 * (r["ci_high"] - 0.5)))
    assert low <= r["delta"] <= high and r["delta"] == pytest.approx(0.4 * (0.75 - 0.5))
    assert P.interval(0.5, 6, 0.995) == pytest.approx((beta.ppf(0.0025, 3, 4), beta.ppf(0.9975, 4, 3)))
    assert P.interval(None, 0, 0.995) is None and P.delta_interval(O.overlap_stats({"a": True}, [])) is None
    empty = {"none": O.overlap_stats({"a": True, "b": False}, []), "all": O.overlap_stats({"a": True}, ["a"])}
    # Overlap all right (ci_high = 1): f * (1 - acc_clean) equals delta only up to rounding.
    perfect = O.overlap_stats({f"x{i}": i < 2 or i % 3 == 0 for i in range(12)}, ["x0", "x1"])
    low, high = P.delta_interval(perfect)
    assert high == pytest.approx(perfect["delta"]) and low < perfect["delta"]
    out = P.plot_overlap({"ten": r, "perfect": perfect, **empty}, tmp_path / "r" / "overlap.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not list(out.parent.glob(".tmp-*"))


def test_read_overlap_ids(tmp_path: Path) -> None:
    path = tmp_path / "overlap.parquet"
    pq.write_table(pa.table({"eval_set": ["s", "s", "s", "t"], "eval_id": ["a/1.jpg", "./a/2.jpg", "a/1.jpg", "b/1.jpg"],
                             "key": ["1", "2", "3", "4"], "distance": [0, 1, 2, 0]}), path)
    assert O.read_overlap_ids(path) == {"s": {"a/1.jpg", "a/2.jpg"}, "t": {"b/1.jpg"}}
    assert O.read_overlap_ids(None) == {}
    with pytest.raises(WitError, match="not found"):
        O.read_overlap_ids(tmp_path / "missing.parquet")
    pq.write_table(pa.table({"eval_set": ["s"]}), path)
    with pytest.raises(WitError, match="'eval_id'"):
        O.read_overlap_ids(path)


def test_markdown_table_formats_nulls() -> None:
    report = {"shapes": O.overlap_stats({"a": True, "b": False}, [])}
    text = O.markdown_table(report)
    assert "| shapes | 2 | 0.0 | 50.0 | 50.0 | – | 0.00 | – | – |" in text


# ---------------------------------------------------------------- zero-shot plumbing

CLASSES = {"red_circle": (220, 30, 30), "blue_square": (30, 60, 220), "green_triangle": (30, 170, 40)}


@pytest.fixture(scope="module")
def eval_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("evalsets") / "shapes"
    for name, colour in CLASSES.items():
        (root / name).mkdir(parents=True)
        for j in range(2):
            Image.new("RGB", (48, 48), colour).save(root / name / f"{j:03d}.jpg")
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained wit-tiny saved like open_clip_train does (``state_dict`` key, ``module.`` prefix)."""
    import open_clip
    import torch

    from training.open_clip_main import register_model_configs

    register_model_configs()
    torch.manual_seed(0)
    model = open_clip.create_model("wit-tiny")
    run = tmp_path_factory.mktemp("train") / "wit"
    (run / "checkpoints").mkdir(parents=True)
    (run / "params.txt").write_text("lr: 0.001\nmodel: wit-tiny\nname: wit\n")
    sd = {f"module.{k}": v for k, v in model.state_dict().items()}
    path = run / "checkpoints" / "epoch_1.pt"
    torch.save({"epoch": 1, "name": "wit", "state_dict": sd}, path)
    return path


def test_load_model_uses_checkpoint_weights(checkpoint: Path) -> None:
    import torch

    lm = Z.load_model(checkpoint, None, device="cpu")  # model name read from params.txt
    assert lm.name == "wit-tiny"
    saved = torch.load(checkpoint, weights_only=True)["state_dict"]
    assert torch.equal(lm.model.state_dict()["text_projection"], saved["module.text_projection"])
    with pytest.raises(WitError, match="checkpoint not found"):
        Z.load_model(checkpoint.parent / "nope.pt", "wit-tiny")
    with pytest.raises(WitError, match="unknown open_clip model"):
        Z.load_model(checkpoint, "no-such-model")


def test_templates() -> None:
    assert Z.class_prompt_name("red_circle") == "red circle"
    assert len(Z.resolve_templates("openai")) == 80
    assert Z.resolve_templates(["a {} shape"]) == ("a {} shape",)
    with pytest.raises(WitError):
        Z.resolve_templates("nope")
    with pytest.raises(WitError):
        Z.resolve_templates(["no placeholder"])


def test_run_overlap_end_to_end(checkpoint: Path, eval_folder: Path, tmp_path: Path) -> None:
    overlap = tmp_path / "overlap.parquet"
    pq.write_table(pa.table({
        "eval_set": ["shapes", "shapes", "shapes", "other"],
        "eval_id": ["red_circle/000.jpg", "blue_square/001.jpg", "nope/000.jpg", "red_circle/001.jpg"],
        "key": ["000000001", "000000002", "000000003", "000000004"], "distance": [0, 2, 1, 0]}), overlap)
    reports = tmp_path / "reports"
    report = O.run_overlap(checkpoint, "wit-tiny", {"shapes": eval_folder}, overlap, reports,
                           O.OverlapConfig(templates="simple", batch_size=4, device="cpu"))
    r = report["shapes"]
    assert (r["n_all"], r["n_overlap"], r["n_clean"], r["n_overlap_unmatched"]) == (6, 2, 4, 1)
    assert r["overlap_pct"] == pytest.approx(100 * 2 / 6)
    assert 0 <= r["ci_low"] <= r["acc_overlap"] <= r["ci_high"] <= 1

    on_disk = json.loads((reports / "overlap.json").read_text())
    assert set(on_disk) == {"shapes"} and on_disk["shapes"]["n_overlap"] == 2
    assert "| shapes | 6 |" in (reports / "overlap.md").read_text()
    preds = pq.read_table(reports / "overlap_predictions.parquet").to_pylist()
    assert len(preds) == 6 and {p["label"] for p in preds} == set(CLASSES)
    assert sum(p["overlap"] for p in preds) == 2
    assert r["acc_all"] == pytest.approx(sum(p["correct"] for p in preds) / 6)
    assert all(p["pred"] in CLASSES and (p["top5_correct"] or not p["correct"]) for p in preds)
    assert all(p["top5_correct"] for p in preds)  # 3 classes: the label is always in the top 3
    assert r["top5"]["acc_all"] == 1.0 and r["n_classes"] == 3
    assert set(r["per_class"]) == set(CLASSES) and sum(c["n_overlap"] for c in r["per_class"].values()) == 2
    assert (reports / "overlap.png").read_bytes()[:4] == b"\x89PNG"
    assert not list(reports.glob(".tmp-*"))


def test_run_overlap_on_webdataset_eval_set(checkpoint: Path, tmp_path: Path) -> None:
    import io

    import webdataset as wds

    shards = tmp_path / "wds"
    shards.mkdir()
    with wds.TarWriter(str(shards / "000.tar")) as sink:
        for i, (name, colour) in enumerate(list(CLASSES.items()) * 2):
            buf = io.BytesIO()
            Image.new("RGB", (32, 32), colour).save(buf, "JPEG")
            sink.write({"__key__": f"s{i}", "jpg": buf.getvalue(), "cls": str(i % 3)})
    (shards / "classnames.txt").write_text("\n".join(CLASSES) + "\n")
    overlap = tmp_path / "overlap.parquet"
    pq.write_table(pa.table({"eval_set": ["wds"], "eval_id": ["s4"], "key": ["1"], "distance": [0]}), overlap)
    templates = tmp_path / "prompts.txt"
    templates.write_text("a {} on grey.\n")
    report = O.run_overlap(checkpoint, None, {"wds": {"path": str(shards)}}, overlap, tmp_path / "reports",
                           O.OverlapConfig(templates=str(templates), batch_size=4, device="cpu", plot=False))
    assert (report["wds"]["n_all"], report["wds"]["n_overlap"]) == (6, 1)
    assert not (tmp_path / "reports" / "overlap.png").exists()


def test_missing_eval_folder_is_one_line_error(checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(WitError, match="eval image folder not found"):
        O.run_overlap(checkpoint, "wit-tiny", {"x": tmp_path / "none"}, None, tmp_path / "reports",
                      O.OverlapConfig(device="cpu"))
