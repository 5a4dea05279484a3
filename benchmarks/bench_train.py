"""Benchmark: training throughput of ``wit train`` against stock open_clip_train with the same arguments.

Generates WebDataset shards of random-noise images with captions, then alternates (``--repeat`` times):
- stock: ``python -m open_clip_train.main ARGS`` (one process), or ``torchrun --nproc-per-node N -m
  open_clip_train.main ARGS`` with ``--nproc N > 1``; for a model that is not one of open_clip's own
  configs (``wit-tiny``), the stock trainer is started from ``python -c`` after ``open_clip.add_model_config``,
  since stock open_clip has no option to register a config;
- wit: ``wit train SHARDS OUT ...`` (``python -m flows.cli train``), which builds the same ARGS
  (``training.train.open_clip_args``) and launches ``training.open_clip_main`` (torchrun when N > 1).
On CPU both get the ``OMP_NUM_THREADS`` that ``wit train`` would set (cores / (processes x (1 + workers))).
Reported per variant: the median of open_clip's own samples/s log lines (steady state, all devices), the
wall time from launch to exit (start-up included), and the ratios wit / stock. Wall-clock figures swing
with the load of other processes on a shared machine; the load average is recorded.

CPU (now):  .venv/bin/python benchmarks/bench_train.py
GPU (open): .venv/bin/python benchmarks/bench_train.py --device cuda --model ViT-B-32 --precision amp_bf16 \\
            --image-size 256 --samples 65536 --batch-size 256 --workers 8 --nproc 8 --out benchmarks/results/train_gpu.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.core.io import write_json  # noqa: E402
from training import train as T  # noqa: E402

RESULT = REPO / "benchmarks" / "results" / "train.json"
STOCK_SHIM = ("import sys, open_clip; open_clip.add_model_config({configs!r}); "
              "from open_clip_train.main import main; sys.exit(main(sys.argv[1:]) or 0)")


def write_shards(folder: Path, n: int, per_shard: int, size: int) -> None:
    import io

    import numpy as np
    import webdataset as wds
    from PIL import Image

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    sizes = {}
    for shard in range((n + per_shard - 1) // per_shard):
        name = f"{shard:05d}.tar"
        count = min(per_shard, n - shard * per_shard)
        with wds.TarWriter(str(folder / name)) as sink:
            for i in range(count):
                buf = io.BytesIO()
                Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
                sink.write({"__key__": f"{shard:05d}{i:05d}", "jpg": buf.getvalue(), "txt": f"noise image {shard} {i}"})
        sizes[name] = count
    (folder / "sizes.json").write_text(json.dumps(sizes))


def train_config(args: argparse.Namespace) -> T.TrainConfig:
    return T.TrainConfig(model=args.model, epochs=1, batch_size=args.batch_size, lr=5e-4, warmup=10,
                         workers=args.workers, precision=args.precision, device=args.device,
                         nproc_per_node=args.nproc, global_batch=0)


def stock_command(shards: Path, out: Path, args: argparse.Namespace) -> list[str]:
    """The stock trainer with exactly the arguments ``wit train`` passes to open_clip."""
    from training.launch import resolve_launch
    from training.open_clip_main import MODEL_CONFIGS

    cfg = train_config(args)
    data = T.resolve_shards(shards, cfg)
    launch = resolve_launch(cfg, {}, args.nproc if args.device.startswith("cuda") else 0)
    plan = T.plan_training(cfg, data.n_samples, data.n_shards, args.device.startswith("cuda"), launch.world_size)
    oc_args = T.open_clip_args(data.train_data, data.n_samples, out, cfg, plan)
    builtin = args.model in T.known_models([]) - {p.stem for p in MODEL_CONFIGS.glob("*.json")}
    if launch.launcher == "torchrun":
        runner = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(args.nproc), "--standalone"]
        shim = ["--no-python", "--", sys.executable, "-c", STOCK_SHIM.format(configs=str(MODEL_CONFIGS))]
        return runner + (["-m", "open_clip_train.main", "--"] if builtin else shim) + oc_args
    head = ["-m", "open_clip_train.main"] if builtin else ["-c", STOCK_SHIM.format(configs=str(MODEL_CONFIGS))]
    return [sys.executable, *head, *oc_args]


def wit_command(shards: Path, out: Path, args: argparse.Namespace) -> list[str]:
    cfg = train_config(args)
    opts = ["--model", cfg.model, "--epochs", "1", "--batch-size", str(cfg.batch_size), "--lr", str(cfg.lr),
            "--warmup", str(cfg.warmup), "--workers", str(cfg.workers), "--precision", cfg.precision,
            "--device", cfg.device, "--nproc-per-node", str(cfg.nproc_per_node), "--global-batch", "0"]
    return [sys.executable, "-m", "flows.cli", "train", str(shards), str(out), *opts]


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> dict[str, Any]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=T.subprocess_env(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, check=False)
    wall = time.perf_counter() - t0
    speeds = [s for s in map(T.parse_speed, proc.stdout.splitlines()) if s is not None]
    if proc.returncode != 0 or not speeds:
        tail = "\n".join(proc.stdout.splitlines()[-15:])
        raise SystemExit(f"{' '.join(cmd[:4])} ... failed (exit code {proc.returncode}):\n{tail}")
    steady = speeds[1:] or speeds  # the first logged step includes data-loader start-up
    return {"wall_s": round(wall, 2), "samples_per_s": round(statistics.median(steady), 2)}


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {"runs": runs, "wall_s_median": round(statistics.median(r["wall_s"] for r in runs), 2),
            "samples_per_s_median": round(statistics.median(r["samples_per_s"] for r in runs), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="wit-tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--samples", type=int, default=2048)
    parser.add_argument("--per-shard", type=int, default=512)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--nproc", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--out", default=str(RESULT))
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_zeroshot import machine

    info = machine()
    # The thread count `wit train` picks on CPU, given to both (wit train keeps a value set by the user).
    env = T.cpu_threads_env(args.device, args.nproc, args.workers, {})
    info["env"] = env
    stock, wit = [], []
    with tempfile.TemporaryDirectory() as tmp:
        shards = Path(tmp) / "shards"
        write_shards(shards, args.samples, args.per_shard, args.image_size)
        for i in range(args.repeat):
            stock.append(run(stock_command(shards, Path(tmp) / f"stock{i}", args), REPO, env))
            wit.append(run(wit_command(shards, Path(tmp) / f"wit{i}", args), REPO, env))
            print({"stock": stock[-1], "wit": wit[-1]}, flush=True)
        example = stock_command(shards, Path(tmp) / "stockN", args)
    s, w = summarise(stock), summarise(wit)
    on_gpu = args.device.startswith("cuda")
    write_json(args.out, {
        "benchmark": "training throughput: `wit train` vs stock open_clip_train, same arguments",
        "machine": info, "setup": {k: v for k, v in vars(args).items() if k != "out"},
        "stock_command": " ".join(example).replace(tmp, "$TMP"), "stock": s, "wit_train": w,
        "ratio_wit_over_stock": {"samples_per_s": round(w["samples_per_s_median"] / s["samples_per_s_median"], 3),
                                 "wall_s": round(w["wall_s_median"] / s["wall_s_median"], 3)},
        "gpu": "measured here" if on_gpu else {
            "status": "open", "reason": "no GPU on this machine: ViT-B-32 samples/s of `wit train` vs stock "
            "`torchrun -m open_clip_train.main` still to be measured (see the GPU command in this script's docstring)"},
    })
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
