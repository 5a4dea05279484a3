"""Benchmark: zero-shot evaluation (training.eval.zeroshot) on this machine's CPU, or its GPU with --device cuda.

For each model (wit-tiny and ViT-B-32, randomly initialised: nothing is downloaded), reported:
- the time to build the zero-shot classifier from CLIP's 80 ImageNet prompt templates for ``--classes``
  classes (prompts/s and the extrapolated time for ImageNet's 1,000 classes);
- zero-shot images/s over a generated ImageFolder of ``--images`` JPEGs (256x256, decode + preprocessing +
  image tower + ranking, batch ``--batch-size``), end to end as ``run_overlap`` does it;
- wall-clock (best and median of ``--repeat`` runs) and CPU time, since on a shared machine wall-clock
  rates swing with the load of other processes; the load average is recorded.

GPU figures are open until this runs on a GPU machine (``--device cuda --out benchmarks/results/zeroshot_gpu.json``).

    .venv/bin/python benchmarks/bench_zeroshot.py [--models wit-tiny ViT-B-32] [--images 256] [--classes 10]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pipeline.core.io import write_json  # noqa: E402
from training.eval import zeroshot as Z  # noqa: E402
from benchinfo import machine_info  # noqa: E402

RESULT = REPO / "benchmarks" / "results" / "zeroshot.json"
CLASSES = ["tench", "goldfish", "great white shark", "tiger shark", "hammerhead shark", "electric ray",
           "stingray", "rooster", "hen", "ostrich", "brambling", "goldfinch", "house finch", "junco",
           "indigo bunting", "American robin", "bulbul", "jay", "magpie", "chickadee"]


def machine() -> dict[str, Any]:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return machine_info(("torch", "torchvision", "open_clip_torch", "pillow"), gpu=gpu,
                        torch_threads=torch.get_num_threads())


def timed(fn: Callable[[], Any], repeat: int) -> dict[str, Any]:
    """Wall (best, median) and CPU seconds of ``repeat`` calls."""
    walls, cpus = [], []
    for _ in range(repeat):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return {"wall_s_best": round(min(walls), 3), "wall_s_median": round(statistics.median(walls), 3),
            "cpu_s_median": round(statistics.median(cpus), 3)}


def make_folder(root: Path, n_images: int, n_classes: int) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n_images):
        folder = root / f"class_{i % n_classes:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(small).resize((256, 256), Image.BICUBIC).save(folder / f"{i:05d}.jpg", quality=90)
    return root


def bench_model(name: str, folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    lm = Z.load_model(None, name, args.device)
    classes = (CLASSES * (args.classes // len(CLASSES) + 1))[:args.classes]
    n_prompts = len(classes) * 80
    build = timed(lambda: Z.build_classifier(lm, classes, "openai", classes_per_batch=10), args.repeat)
    data = Z.EvalData(folder)
    classifier = Z.build_classifier(lm, data.prompt_names, "simple")
    rows: list[Any] = []
    run = timed(lambda: rows.extend(Z.classify(lm, data, classifier, args.batch_size, args.workers)), args.repeat)
    n_images = len(rows) // args.repeat
    with torch.no_grad():
        size = lm.preprocess.transforms[0].size if hasattr(lm.preprocess, "transforms") else None
    return {
        "model": name, "random_init": True, "device": lm.device, "input_size": size,
        "classifier_80_templates": {"classes": len(classes), "prompts": n_prompts, **build,
                                    "prompts_per_s": round(n_prompts / build["wall_s_best"], 1),
                                    "imagenet_1000_classes_s_estimate":
                                        round(build["wall_s_best"] * 1000 / len(classes), 1)},
        "zeroshot": {"images": n_images, "batch_size": args.batch_size, "workers": args.workers, **run,
                     "images_per_s": round(n_images / run["wall_s_best"], 1),
                     "images_per_cpu_s": round(n_images / run["cpu_s_median"], 1)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["wit-tiny", "ViT-B-32"])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=str(RESULT))
    args = parser.parse_args()
    info = machine()
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_folder(Path(tmp) / "eval", args.images, 10)
        results = []
        for name in args.models:
            results.append(bench_model(name, folder, args))
            print(results[-1], flush=True)
    on_gpu = args.device.startswith("cuda")
    write_json(args.out, {
        "benchmark": "zero-shot evaluation (training.eval.zeroshot): classifier build and images/s",
        "machine": info, "device": args.device, "results": results,
        "gpu": "measured here" if on_gpu else {
            "status": "open", "reason": "no GPU on this machine; run `benchmarks/bench_zeroshot.py --device cuda "
            "--batch-size 256 --workers 8 --out benchmarks/results/zeroshot_gpu.json` on a GPU machine"},
    })
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
