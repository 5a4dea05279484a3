"""Zero-shot classification of an ImageFolder with an open_clip checkpoint (CLIP section 3.1.2).

Class names come from the folder names (``red_circle`` -> "red circle"); each class's text embedding is
the mean over prompt templates. Heavy imports (torch, open_clip) happen inside the functions.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence, Union

from pipeline.errors import WitError

if TYPE_CHECKING:
    import torch

Template = Union[str, Callable[[str], str]]
DEFAULT_TEMPLATES: tuple[str, ...] = ("a photo of a {}.", "a {}.", "a picture of a {}.", "an image of a {}.")
TEMPLATE_SETS = ("default", "openai", "simple")


@dataclasses.dataclass
class LoadedModel:
    """An open_clip model in eval mode with its eval transform and tokenizer."""

    model: Any
    preprocess: Callable
    tokenizer: Callable
    device: str
    name: str


def class_prompt_name(folder_name: str) -> str:
    """``red_circle`` -> ``red circle`` (underscores and dashes become spaces)."""
    return re.sub(r"[_\-]+", " ", folder_name).strip()


def resolve_templates(templates: str | Sequence[str]) -> Sequence[Template]:
    """A template set by name (``default``, ``openai`` = CLIP's 80 ImageNet prompts, ``simple``) or a list of
    ``str.format`` templates with one ``{}``."""
    if isinstance(templates, str):
        if templates == "default":
            return DEFAULT_TEMPLATES
        import open_clip

        if templates == "openai":
            return tuple(open_clip.OPENAI_IMAGENET_TEMPLATES)
        if templates == "simple":
            return tuple(open_clip.SIMPLE_IMAGENET_TEMPLATES)
        raise WitError(f"templates: unknown set {templates!r}; known: {', '.join(TEMPLATE_SETS)} or a list")
    templates = tuple(templates)
    if not templates or not all(isinstance(t, str) and "{}" in t for t in templates):
        raise WitError(f"templates: expected prompt templates containing '{{}}', got {list(templates)!r}")
    return templates


def pick_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def model_name_from_run(checkpoint: str | Path) -> str | None:
    """The ``model`` recorded in open_clip's ``params.txt`` beside ``<run>/checkpoints/<ckpt>.pt``."""
    params = Path(checkpoint).resolve().parent.parent / "params.txt"
    if not params.is_file():
        return None
    for line in params.read_text().splitlines():
        key, _, value = line.partition(": ")
        if key == "model":
            return value.strip()
    return None


def load_model(checkpoint: str | Path | None, model_name: str | None = None, device: str = "auto") -> LoadedModel:
    """Load ``model_name`` (our configs registered) with weights from an open_clip(_train) checkpoint.

    ``checkpoint=None`` gives a randomly initialised model. open_clip strips the ``state_dict`` wrapper
    and ``module.`` prefixes of training checkpoints itself.
    """
    import open_clip

    from training.open_clip_main import register_model_configs

    register_model_configs()
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise WitError(f"{checkpoint}: checkpoint not found")
    name = model_name or (model_name_from_run(checkpoint) if checkpoint else None)
    if not name:
        raise WitError(f"{checkpoint}: give the model name (no params.txt beside the checkpoint's run)")
    if name not in open_clip.list_models():
        raise WitError(f"model {name!r}: unknown open_clip model config")
    device = pick_device(device)
    model, _, preprocess = open_clip.create_model_and_transforms(
        name, pretrained=str(checkpoint) if checkpoint else None, device=device)
    model.eval()
    return LoadedModel(model, preprocess, open_clip.get_tokenizer(name), device, name)


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


def build_classifier(lm: LoadedModel, classnames: Sequence[str], templates: str | Sequence[str] = "default") -> "torch.Tensor":
    """The (embed_dim, n_classes) zero-shot weight matrix for ``classnames``."""
    import open_clip

    return open_clip.build_zero_shot_classifier(
        lm.model, lm.tokenizer, [class_prompt_name(c) for c in classnames], resolve_templates(templates),
        num_classes_per_batch=10, device=lm.device)


def classify_folder(lm: LoadedModel, folder: str | Path, templates: str | Sequence[str] = "default",
                    batch_size: int = 64, workers: int = 0) -> list[dict[str, Any]]:
    """Zero-shot classify every image in an ImageFolder.

    Returns one row per image: ``eval_id`` (path relative to ``folder``), ``label``, ``pred`` (class folder
    names), ``correct`` and ``top5_correct``.
    """
    import torch

    dataset = image_folder(folder, lm.preprocess)
    classifier = build_classifier(lm, dataset.classes, templates)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
    k = min(5, len(dataset.classes))
    top1: list[int] = []
    top5: list[bool] = []
    with torch.no_grad():
        for images, targets in loader:
            features = lm.model.encode_image(images.to(lm.device), normalize=True)
            ranked = (features @ classifier).topk(k, dim=1).indices.cpu()
            top1 += ranked[:, 0].tolist()
            top5 += (ranked == targets[:, None]).any(dim=1).tolist()
    root = Path(folder)
    return [{"eval_id": Path(path).relative_to(root).as_posix(), "label": dataset.classes[target],
             "pred": dataset.classes[pred], "correct": pred == target, "top5_correct": hit}
            for (path, target), pred, hit in zip(dataset.samples, top1, top5)]


def zeroshot_eval(checkpoint: str | Path | None, model_name: str | None, folder: str | Path,
                  templates: str | Sequence[str] = "default", batch_size: int = 64,
                  device: str = "auto") -> list[dict[str, Any]]:
    """Load the checkpoint and classify ``folder``; see :func:`classify_folder`."""
    return classify_folder(load_model(checkpoint, model_name, device), folder, templates, batch_size)


def accuracy(rows: Sequence[dict[str, Any]], key: str = "correct") -> float | None:
    """Fraction of rows with ``key`` true; None for no rows."""
    return sum(bool(r[key]) for r in rows) / len(rows) if rows else None
