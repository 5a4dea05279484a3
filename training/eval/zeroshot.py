"""Zero-shot classification with an open_clip checkpoint (CLIP section 3.1.2), batched, on the GPU when present.

Entry points: :func:`load_model`, :func:`build_classifier`, :func:`classify_eval_set` on an :class:`EvalSpec`
(ImageFolder or WebDataset shards). Heavy imports (torch, open_clip) happen inside the functions.
Eval set formats and class names: docs/training.md ("Zero-shot classification")."""
from __future__ import annotations

import dataclasses
import io
import json
import pickle
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

from pipeline.core.config import Config, config_from_dict, field
from pipeline.core.errors import WitError
from training.open_clip_main import model_config_name, model_name_from_run, register_model_configs
from training.shards import is_url, webdataset_url
from training.eval.templates import DEFAULT_TEMPLATES, TEMPLATE_SETS, resolve_templates  # noqa: F401 (re-exported)

if TYPE_CHECKING:
    import torch

CLASSNAMES_FILES = ("classnames.txt", "classnames.json")
IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
Batch = tuple[list[str], "torch.Tensor", "torch.Tensor"]


@dataclasses.dataclass
class LoadedModel:
    """An open_clip model in eval mode with its eval transform and tokenizer."""

    model: Any
    preprocess: Callable
    tokenizer: Callable
    device: str
    name: str


@dataclasses.dataclass
class EvalSpec(Config, section="eval_set"):
    """One eval set: ``path`` is an ImageFolder root, a folder of ``.tar`` shards, or a shard pattern/URL."""

    path: str
    kind: str = field("auto", help="imagefolder, webdataset or auto (webdataset when the path has .tar shards)",
                      choices=("auto", "imagefolder", "webdataset"))
    classnames: str | list[str] | None = field(None, help="class names: a file (.txt one a line, or a .json "
                                               "list) or a list; default: classnames.txt/json beside the shards")
    label_key: str = field("auto", help="cls, txt, json or auto (the first present)",
                           choices=("auto", "cls", "txt", "json"))


def class_prompt_name(folder_name: str) -> str:
    """``red_circle`` -> ``red circle`` (underscores and dashes become spaces)."""
    return re.sub(r"[_\-]+", " ", folder_name).strip()


def pick_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# ---------------------------------------------------------------- models

def _register_for(checkpoint: str | Path | None, model_name: str | None) -> str | None:
    """Register our configs, a run's copied custom configs and a config-file model; return the model name."""
    extra = []
    if checkpoint is not None:
        run_configs = Path(checkpoint).resolve().parent.parent / "model_configs"
        extra += [run_configs] if run_configs.is_dir() else []
    if model_name and model_name.endswith(".json"):
        if not Path(model_name).is_file():
            raise WitError(f"{model_name}: model config file not found")
        extra.append(Path(model_name).parent)
    register_model_configs(*extra)
    return model_config_name(model_name) if model_name else None


def load_model(checkpoint: str | Path | None, model_name: str | None = None, device: str = "auto") -> LoadedModel:
    """Load ``model_name`` (a name or config .json; default: the run's ``params.txt``) with weights from an
    open_clip(_train) checkpoint or any open_clip-loadable weights file given by path.

    ``checkpoint=None`` gives a randomly initialised model. open_clip strips the ``state_dict`` wrapper
    and ``module.`` prefixes of training checkpoints itself.
    """
    import open_clip

    if checkpoint is not None and not Path(checkpoint).is_file():
        raise WitError(f"{checkpoint}: checkpoint not found")
    name = _register_for(checkpoint, model_name) or (model_name_from_run(checkpoint) if checkpoint else None)
    if not name:
        raise WitError(f"{checkpoint}: give the model name (no params.txt beside the checkpoint's run)")
    if name not in open_clip.list_models():
        raise WitError(f"model {name!r}: unknown open_clip model config")
    device = pick_device(device)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            name, pretrained=str(checkpoint) if checkpoint else None, device=device)
    except (RuntimeError, KeyError, ValueError, EOFError, pickle.UnpicklingError) as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise WitError(f"{checkpoint}: cannot load into {name} ({first})") from None
    model.eval()
    return LoadedModel(model, preprocess, open_clip.get_tokenizer(name), device, name)


# ---------------------------------------------------------------- eval sets

def eval_spec(value: str | Path | Mapping[str, Any] | EvalSpec) -> EvalSpec:
    """An :class:`EvalSpec` from a path or a mapping of its fields (YAML/JSON configs)."""
    if isinstance(value, EvalSpec):
        return value
    if isinstance(value, Mapping):
        if "path" not in value:
            raise WitError(f"eval set {dict(value)!r}: needs 'path'")
        return config_from_dict(EvalSpec, {**value, "path": str(value["path"])})
    return EvalSpec(str(value))


def shard_urls(path: str) -> list[str]:
    """The shards of a WebDataset eval set: the ``.tar`` files of a folder, or a ``.tar`` pattern/URL expanded
    (local files must exist); empty when ``path`` names no shards."""
    from braceexpand import braceexpand


    if not is_url(path) and Path(path).is_dir():
        return sorted(str(p) for p in Path(path).glob("*.tar"))
    urls = list(braceexpand(path))
    if not all(u.endswith(".tar") or u.startswith("pipe:") for u in urls):
        return []
    missing = [u for u in urls if not is_url(u) and not Path(u).is_file()]
    if missing:
        raise WitError(f"{missing[0]}: eval shard not found ({len(missing)} of {len(urls)} missing)")
    return [webdataset_url(u) for u in urls]


def eval_kind(spec: EvalSpec) -> str:
    if spec.kind != "auto":  # imagefolder or webdataset (EvalSpec checks its choices)
        return spec.kind
    return "webdataset" if shard_urls(spec.path) else "imagefolder"


def read_classnames(path: str | Path) -> list[str] | dict[str, str]:
    """Class names from a ``.txt`` (one a line) or ``.json`` file: a list, ``{"0": name, ...}`` (read as a
    list) or, for an ImageFolder, ``{folder: name}``."""
    path = Path(path)
    if not path.is_file():
        raise WitError(f"{path}: class names file not found")
    if path.suffix != ".json":
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise WitError(f"{path}: not valid JSON ({exc.msg})") from None
    if isinstance(data, dict) and all(str(k).isdigit() for k in data):
        data = [data[k] for k in sorted(data, key=int)]
    values = data.values() if isinstance(data, dict) else data
    if not isinstance(data, (list, dict)) or not all(isinstance(c, str) for c in values):
        raise WitError(f"{path}: expected a list of class names or {{folder: name}}")
    return data


def _find_classnames(spec: EvalSpec) -> list[str] | dict[str, str] | None:
    if isinstance(spec.classnames, list):
        return list(spec.classnames)
    if spec.classnames:
        return read_classnames(spec.classnames)
    folder = Path(spec.path) if Path(spec.path).is_dir() else Path(spec.path).parent
    found = [folder / name for name in CLASSNAMES_FILES if (folder / name).is_file()]
    return read_classnames(found[0]) if found else None


def _folder_prompt_names(classes: list[str], names: list[str] | dict[str, str] | None, where: str) -> list[str]:
    """Prompt names of ImageFolder classes: from a class names list (one per folder, sorted) or a
    ``{folder: name}`` mapping, else the folder names with ``_``/``-`` as spaces."""
    if names is None:
        return [class_prompt_name(c) for c in classes]
    if isinstance(names, dict):
        return [names.get(c, class_prompt_name(c)) for c in classes]
    if len(names) != len(classes):
        raise WitError(f"{where}: {len(names)} class names for {len(classes)} class folders")
    return list(names)


def _raw_label(sample: Mapping[str, Any], key: str, where: str) -> int | str:
    """A sample's label from ``.cls`` (int), ``.txt`` (name) or ``.json`` (``label``), undecoded bytes."""
    keys = ("cls", "txt", "json") if key == "auto" else (key,)
    for k in keys:
        if k in sample:
            text = sample[k].decode("utf-8").strip()
            if k == "cls":
                return int(text)
            if k == "json":
                label = json.loads(text).get("label")
                if label is None:
                    raise WitError(f"{where}: sample {sample['__key__']}: .json has no 'label'")
                return label
            return text
    raise WitError(f"{where}: sample {sample['__key__']} has no label ({', '.join('.' + k for k in keys)})")


def _wds_samples(urls: list[str]) -> Iterator[dict[str, Any]]:
    import webdataset as wds

    yield from wds.WebDataset(urls, shardshuffle=False)


def _label_index(label: int | str, classnames: list[str], where: str) -> int:
    if isinstance(label, int):
        if not 0 <= label < len(classnames):
            raise WitError(f"{where}: label {label} out of range for {len(classnames)} class names")
        return label
    if label in classnames:
        return classnames.index(label)
    raise WitError(f"{where}: label {label!r} is not in the class names")


class EvalData:
    """An eval set ready to iterate in batches of (eval ids, images, label indices)."""

    def __init__(self, spec: EvalSpec | str | Path | Mapping[str, Any]) -> None:
        self.spec = eval_spec(spec)
        self.kind = eval_kind(self.spec)
        if self.kind == "imagefolder":
            self._folder = image_folder(self.spec.path)
            self.classnames = list(self._folder.classes)
            self.prompt_names = _folder_prompt_names(self.classnames, _find_classnames(self.spec), self.spec.path)
        else:
            self._urls = shard_urls(self.spec.path)
            found = _find_classnames(self.spec)
            if isinstance(found, dict):
                raise WitError(f"{self.spec.path}: WebDataset class names must be a list (index -> name)")
            self.classnames = found if found is not None else self._labels_seen()
            self.prompt_names = list(self.classnames)

    def _labels_seen(self) -> list[str]:
        """Class names as the sorted distinct string labels (a first pass over the shards)."""
        labels = {_raw_label(s, self.spec.label_key, self.spec.path) for s in _wds_samples(self._urls)}
        if not labels or not all(isinstance(label, str) for label in labels):
            raise WitError(f"{self.spec.path}: integer labels need a class names file "
                           f"({' or '.join(CLASSNAMES_FILES)} beside the shards, or 'classnames')")
        return sorted(labels)

    def batches(self, transform: Callable, batch_size: int = 64, workers: int = 0) -> Iterator[Batch]:
        """(eval ids, image tensor, label index tensor) batches, in a stable order."""
        import torch

        if self.kind == "imagefolder":
            self._folder.transform = transform
            loader = torch.utils.data.DataLoader(self._folder, batch_size=batch_size, shuffle=False,
                                                 num_workers=workers)
            root, offset = Path(self.spec.path), 0
            for images, targets in loader:
                paths = self._folder.samples[offset:offset + len(targets)]
                offset += len(targets)
                yield [Path(p).relative_to(root).as_posix() for p, _ in paths], images, targets
            return
        yield from self._wds_batches(transform, batch_size)

    def _wds_batches(self, transform: Callable, batch_size: int) -> Iterator[Batch]:
        import torch
        from PIL import Image

        ids: list[str] = []
        images: list[Any] = []
        targets: list[int] = []
        for sample in _wds_samples(self._urls):
            key = next((k for k in IMAGE_KEYS if k in sample), None)
            if key is None:
                raise WitError(f"{self.spec.path}: sample {sample['__key__']} has no image ({', '.join(IMAGE_KEYS)})")
            label = _raw_label(sample, self.spec.label_key, self.spec.path)
            image = Image.open(io.BytesIO(sample[key])).convert("RGB")
            ids.append(sample["__key__"])
            images.append(transform(image))
            targets.append(_label_index(label, self.classnames, self.spec.path))
            if len(ids) == batch_size:
                yield ids, torch.stack(images), torch.tensor(targets)
                ids, images, targets = [], [], []
        if ids:
            yield ids, torch.stack(images), torch.tensor(targets)


def image_folder(folder: str | Path, transform: Callable | None = None) -> Any:
    """torchvision's ImageFolder over ``folder``, with a one-line error when it is missing or empty."""
    from torchvision.datasets import ImageFolder

    folder = Path(folder)
    if not folder.is_dir():
        raise WitError(f"{folder}: eval image folder not found")
    try:
        return ImageFolder(str(folder), transform=transform)
    except FileNotFoundError as exc:
        raise WitError(f"{folder}: no class folders with images ({exc})") from None


# ---------------------------------------------------------------- classification

def build_classifier(lm: LoadedModel, classnames: Sequence[str], templates: str | Sequence[str] = "default",
                     classes_per_batch: int = 10) -> "torch.Tensor":
    """The (embed_dim, n_classes) zero-shot weight matrix: per class, the normalised mean of the normalised
    text embeddings of its prompts. ``classnames`` are used as they are (see :func:`class_prompt_name`)."""
    import open_clip
    import torch

    with torch.no_grad(), _autocast(lm.device):
        weights = open_clip.build_zero_shot_classifier(
            lm.model, lm.tokenizer, list(classnames), resolve_templates(templates),
            num_classes_per_batch=classes_per_batch, device=lm.device)
    return weights.float()


def _autocast(device: str) -> Any:
    import contextlib

    import torch

    if device.startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    return contextlib.nullcontext()


def classify(lm: LoadedModel, data: EvalData, classifier: "torch.Tensor", batch_size: int = 64,
             workers: int = 0) -> list[dict[str, Any]]:
    """Zero-shot classify every image of ``data`` with ``classifier``.

    Returns one row per image: ``eval_id``, ``label``, ``pred`` (class names as the eval set names them),
    ``correct``, ``top5_correct`` and ``top5`` (the five best classes, best first).
    """
    import torch

    k = min(5, len(data.classnames))
    rows: list[dict[str, Any]] = []
    with torch.no_grad(), _autocast(lm.device):
        for ids, images, targets in data.batches(lm.preprocess, batch_size, workers):
            features = lm.model.encode_image(images.to(lm.device), normalize=True)
            ranked = (features.float() @ classifier).topk(k, dim=1).indices.cpu()
            for eval_id, target, top in zip(ids, targets.tolist(), ranked.tolist()):
                rows.append({"eval_id": eval_id, "label": data.classnames[target], "pred": data.classnames[top[0]],
                             "correct": top[0] == target, "top5_correct": target in top,
                             "top5": [data.classnames[i] for i in top]})
    return rows


def classify_eval_set(lm: LoadedModel, spec: EvalSpec | str | Path | Mapping[str, Any],
                      templates: str | Sequence[str] = "default", batch_size: int = 64,
                      workers: int = 0) -> list[dict[str, Any]]:
    """Build the classifier for an eval set's classes and classify it; see :func:`classify`."""
    data = EvalData(spec)
    return classify(lm, data, build_classifier(lm, data.prompt_names, templates), batch_size, workers)


def accuracy(rows: Sequence[dict[str, Any]], key: str = "correct") -> float | None:
    """Fraction of rows with ``key`` true; None for no rows."""
    return sum(bool(r[key]) for r in rows) / len(rows) if rows else None


def per_class_accuracy(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``{label: {"n", "top1", "top5"}}`` over the rows of :func:`classify`."""
    by_label: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_label.setdefault(r["label"], []).append(r)
    return {label: {"n": len(rs), "top1": accuracy(rs), "top5": accuracy(rs, "top5_correct")}
            for label, rs in sorted(by_label.items())}
