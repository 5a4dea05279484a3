"""Zero-shot evaluation: eval sets (ImageFolder, WebDataset with .cls/.txt/.json labels), prompt templates,
classifiers checked against a hand computation, top-1/top-5 ranking and per-class accuracy."""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from pipeline.core.errors import WitError
from training.eval import templates as TP
from training.eval import zeroshot as Z

COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}


def jpeg(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), colour).save(buf, "PNG")  # lossless: the stub model reads exact colours
    return buf.getvalue()


def write_wds(path: Path, samples: list[dict[str, Any]]) -> None:
    import webdataset as wds

    path.parent.mkdir(parents=True, exist_ok=True)
    with wds.TarWriter(str(path)) as sink:
        for s in samples:
            sink.write(s)


@pytest.fixture()
def colour_folder(tmp_path: Path) -> Path:
    root = tmp_path / "folder"
    for name, colour in COLOURS.items():
        (root / f"{name}_thing").mkdir(parents=True)
        for j in range(2):
            (root / f"{name}_thing" / f"{j}.png").write_bytes(jpeg(colour))
    return root


# ---------------------------------------------------------------- templates

def test_template_sets_and_files(tmp_path: Path) -> None:
    openai = TP.resolve_templates("openai")
    assert len(openai) == 80 and openai[0] == "a bad photo of a {}." and all(t.count("{}") == 1 for t in openai)
    assert len(TP.resolve_templates("simple")) == 7 and TP.resolve_templates("default") == TP.DEFAULT_TEMPLATES
    txt = tmp_path / "prompts.txt"
    txt.write_text("# mine\na {} shape.\n\na drawing of a {}.\n")
    assert TP.resolve_templates(str(txt)) == ("a {} shape.", "a drawing of a {}.")
    js = tmp_path / "prompts.json"
    js.write_text(json.dumps(["itap of a {}."]))
    assert TP.resolve_templates(js) == ("itap of a {}.",)
    assert TP.resolve_templates(["a {} thing"]) == ("a {} thing",)
    for bad in (["no placeholder"], ["two {} {}"], ["a {x} {}"], []):
        with pytest.raises(WitError):
            TP.resolve_templates(bad)
    with pytest.raises(WitError, match="neither a set"):
        TP.resolve_templates("nope")
    js.write_text('{"a": 1}')
    with pytest.raises(WitError, match="JSON list"):
        TP.resolve_templates(js)


# ---------------------------------------------------------------- eval sets

def test_image_folder_with_and_without_class_names(colour_folder: Path, tmp_path: Path) -> None:
    data = Z.EvalData(colour_folder)
    assert data.kind == "imagefolder" and data.classnames == ["blue_thing", "green_thing", "red_thing"]
    assert data.prompt_names == ["blue thing", "green thing", "red thing"]
    (colour_folder / "classnames.json").write_text(json.dumps({"red_thing": "crimson object"}))
    assert Z.EvalData(colour_folder).prompt_names == ["blue thing", "green thing", "crimson object"]
    listed = Z.EvalData({"path": str(colour_folder), "classnames": ["b", "g", "r"]})
    assert listed.prompt_names == ["b", "g", "r"] and listed.classnames == ["blue_thing", "green_thing", "red_thing"]
    with pytest.raises(WitError, match="2 class names for 3 class folders"):
        Z.EvalData({"path": str(colour_folder), "classnames": ["b", "g"]})
    ids = [i for batch_ids, _, _ in data.batches(lambda im: __import__("torch").zeros(1), batch_size=4) for i in batch_ids]
    assert ids == ["blue_thing/0.png", "blue_thing/1.png", "green_thing/0.png", "green_thing/1.png",
                   "red_thing/0.png", "red_thing/1.png"]
    with pytest.raises(WitError, match="eval image folder not found"):
        Z.EvalData(tmp_path / "missing")
    with pytest.raises(WitError, match="needs 'path'"):
        Z.eval_spec({"classnames": ["a"]})


def test_webdataset_eval_sets_cls_txt_json(tmp_path: Path) -> None:
    import torch

    names = list(COLOURS)
    cls_dir = tmp_path / "cls"
    write_wds(cls_dir / "000.tar", [{"__key__": f"k{i}", "png": jpeg(COLOURS[names[i % 3]]), "cls": str(i % 3)}
                                    for i in range(5)])
    (cls_dir / "classnames.txt").write_text("\n".join(names) + "\n")
    data = Z.EvalData(cls_dir)
    assert data.kind == "webdataset" and data.classnames == names
    batches = list(data.batches(lambda im: torch.tensor(im.getpixel((0, 0)), dtype=torch.float32), batch_size=2))
    assert [len(b[0]) for b in batches] == [2, 2, 1]
    assert [t for _, _, targets in batches for t in targets.tolist()] == [0, 1, 2, 0, 1]
    assert batches[0][1][1].tolist() == [0.0, 255.0, 0.0]

    txt = tmp_path / "txt" / "{000..001}.tar"
    for j in range(2):
        write_wds(tmp_path / "txt" / f"00{j}.tar", [{"__key__": f"t{j}{i}", "jpg": jpeg(COLOURS[n]), "txt": n}
                                                    for i, n in enumerate(names[j:])])
    by_text = Z.EvalData(str(txt))  # no class names file: the sorted distinct labels
    assert by_text.classnames == ["blue", "green", "red"] and Z.eval_kind(Z.EvalSpec(str(txt))) == "webdataset"

    js = tmp_path / "json" / "000.tar"
    write_wds(js, [{"__key__": "j0", "jpg": jpeg(COLOURS["red"]), "json": json.dumps({"label": 2}),
                    "txt": "a caption, not a label"}])
    spec = {"path": str(js), "classnames": names, "label_key": "json"}
    assert [t.tolist() for _, _, t in Z.EvalData(spec).batches(lambda im: torch.zeros(1))] == [[2]]

    with pytest.raises(WitError, match="integer labels need a class names file"):
        Z.EvalData({"path": str(js), "label_key": "json"})
    with pytest.raises(WitError, match="eval shard not found"):
        Z.EvalData(str(tmp_path / "none" / "{0..1}.tar"))
    bad = tmp_path / "bad" / "000.tar"
    write_wds(bad, [{"__key__": "b0", "jpg": jpeg(COLOURS["red"]), "cls": "7"}])
    with pytest.raises(WitError, match="label 7 out of range"):
        list(Z.EvalData({"path": str(bad), "classnames": names}).batches(lambda im: torch.zeros(1)))


# ---------------------------------------------------------------- classification by hand

class StubModel:
    """An 'encoder' whose image feature is the normalised mean RGB: scores are computable by hand."""

    def encode_image(self, images: Any, normalize: bool = True) -> Any:
        import torch

        f = images.float().mean(dim=(2, 3)) + 1e-3
        return torch.nn.functional.normalize(f, dim=-1)


def test_classify_top1_top5_per_class_by_hand(tmp_path: Path) -> None:
    import torch
    import torchvision.transforms.functional as TF

    # 6 classes as RGB directions; class "near_red" is close to red, so a red image ranks it second.
    directions = {"red": (1, 0, 0), "near_red": (1, 0.3, 0), "green": (0, 1, 0), "blue": (0, 0, 1),
                  "cyan": (0, 1, 1), "magenta": (1, 0, 0.6)}
    classes = sorted(directions)
    root = tmp_path / "six"
    images = {"red": [(255, 0, 0), (255, 0, 0)], "near_red": [(255, 0, 0)], "green": [(0, 255, 0)],
              "cyan": [(0, 0, 255)]}  # near_red image is pure red: wrong top-1, right top-5; cyan image is blue
    for label, colours in images.items():
        (root / label).mkdir(parents=True)
        for j, colour in enumerate(colours):
            (root / label / f"{j}.png").write_bytes(jpeg(colour))
    for label in set(classes) - set(images):
        (root / label).mkdir(parents=True)
        Image.new("RGB", (16, 16), (0, 0, 0)).save(root / label / "dark.png")
    data = Z.EvalData(root)
    classifier = torch.nn.functional.normalize(torch.tensor([directions[c] for c in data.classnames],
                                                            dtype=torch.float32), dim=-1).T
    lm = Z.LoadedModel(StubModel(), lambda im: TF.to_tensor(im), None, "cpu", "stub")
    rows = {r["eval_id"]: r for r in Z.classify(lm, data, classifier, batch_size=3)}
    assert len(rows) == 5 + 2  # and a dark image for blue and magenta
    red = rows["red/0.png"]
    assert red["pred"] == "red" and red["correct"] and red["top5"][:2] == ["red", "near_red"]
    near = rows["near_red/0.png"]
    assert near["pred"] == "red" and not near["correct"] and near["top5_correct"]
    assert rows["green/0.png"]["correct"]
    cyan = rows["cyan/0.png"]  # blue image: blue first, cyan (0,1,1)/√2 second
    assert cyan["pred"] == "blue" and cyan["top5"][1] == "cyan" and not cyan["correct"] and cyan["top5_correct"]
    # red·red = 1 > red·near_red = 0.958 > red·magenta = 0.857 > the rest (~0)
    assert red["top5"][2] == "magenta" and len(red["top5"]) == 5

    per_class = Z.per_class_accuracy(list(rows.values()))
    assert per_class["red"] == {"n": 2, "top1": 1.0, "top5": 1.0}
    assert per_class["near_red"] == {"n": 1, "top1": 0.0, "top5": 1.0}
    assert per_class["cyan"] == {"n": 1, "top1": 0.0, "top5": 1.0}
    assert Z.accuracy(list(rows.values())) == pytest.approx(
        sum(r["correct"] for r in rows.values()) / len(rows))
    assert Z.accuracy([]) is None


# ---------------------------------------------------------------- real models

@pytest.fixture(scope="module")
def tiny() -> Z.LoadedModel:
    return Z.load_model(None, "wit-tiny", device="cpu")


def test_classifier_is_mean_of_normalised_prompt_embeddings(tiny: Z.LoadedModel) -> None:
    import torch

    names = ["red circle", "blue square"]
    weights = Z.build_classifier(tiny, names, "openai")
    assert weights.shape == (128, 2)
    with torch.no_grad():
        for j, name in enumerate(names):
            prompts = [t.format(name) for t in TP.resolve_templates("openai")]
            emb = torch.nn.functional.normalize(tiny.model.encode_text(tiny.tokenizer(prompts)), dim=-1).mean(0)
            assert torch.allclose(weights[:, j], emb / emb.norm(), atol=1e-5)


def test_pretrained_file_and_config_json(tmp_path: Path, tiny: Z.LoadedModel) -> None:
    import torch

    from training.open_clip_main import MODEL_CONFIGS

    weights = tmp_path / "weights.pt"
    torch.save(tiny.model.state_dict(), weights)  # a bare state dict, not in a training run folder
    with pytest.raises(WitError, match="give the model name"):
        Z.load_model(weights)
    config = tmp_path / "cfgs" / "tiny-copy.json"
    config.parent.mkdir()
    config.write_text((MODEL_CONFIGS / "wit-tiny.json").read_text())
    lm = Z.load_model(weights, str(config), device="cpu")
    assert lm.name == "tiny-copy"
    assert torch.equal(lm.model.state_dict()["logit_scale"], tiny.model.state_dict()["logit_scale"])
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(WitError, match="cannot load into wit-tiny"):
        Z.load_model(tmp_path / "junk.pt", "wit-tiny", device="cpu")
    assert Z.pick_device("cpu") == "cpu" and Z.pick_device("auto") in ("cpu", "cuda")


def test_zeroshot_eval_on_webdataset(tmp_path: Path, tiny: Z.LoadedModel) -> None:
    shards = tmp_path / "wds"
    write_wds(shards / "000.tar", [{"__key__": f"k{i}", "jpg": jpeg(list(COLOURS.values())[i % 3]), "cls": str(i % 3)}
                                   for i in range(7)])
    (shards / "classnames.txt").write_text("red\ngreen\nblue\n")
    rows = Z.classify_eval_set(tiny, shards, ["a {} image."], batch_size=4)
    assert [r["eval_id"] for r in rows] == [f"k{i}" for i in range(7)]
    assert [r["label"] for r in rows] == ["red", "green", "blue"] * 2 + ["red"]
    assert all(r["top5_correct"] and len(r["top5"]) == 3 for r in rows)  # 3 classes: always in the top 5
