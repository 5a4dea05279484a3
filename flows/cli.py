"""``wit``: one command, one subcommand per stage, plus ``wit build`` (the whole chain as the
``build-wit`` Prefect flow), ``wit demo`` (the 1k-pair sample end to end) and ``wit serve``
(a served deployment for ``prefect deployment run build-wit/<name>``).

Errors in the user's input end as one line on stderr (exit 2), never a traceback wall.
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
from pathlib import Path
from typing import Any, Callable, NoReturn

from pipeline.core.config import add_config_args, config_from_args
from pipeline.core.errors import WitError
from pipeline.core.io import is_url
from pipeline.core.storage import Folder
from pipeline.core.env import set_quiet_env
from dedup.index import EvalIndexConfig, build_eval_index
from dedup.run import DedupConfig, run_dedup
from flows.build_wit import build_wit
from flows.config import build_config
from flows.demo import run_demo
from pipeline.balance.queries import load_queries, query_sources, save_queries
from pipeline.balance.stage import BalanceConfig, run_balance
from pipeline.crawl.stage import CrawlConfig, run_crawl
from pipeline.download.stage import DownloadConfig, run_download
from pipeline.filter.stage import FilterConfig, run_filter
from pipeline.miniweb.generate import generate_miniweb, serve_forever
from pipeline.report import build_report, funnel_lines, overlap_lines, write_report
from pipeline.report.dashboard import PAGE
from pipeline.report.serve import dashboard_server
from training.eval.overlap import OverlapConfig, run_overlap
from training.train import TrainConfig, latest_checkpoint, run_train



_JSON = False  # --json, or stdout not a terminal: the full result record as JSON instead of the short summary


def _print_json(obj: Any) -> None:
    """A command's result on stdout: the short human summary, or the whole record as JSON with --json."""
    if _JSON:
        print(json.dumps(obj, indent=2, sort_keys=True, default=str))
    else:
        print("\n".join(summary_lines(obj)))


def summary_lines(obj: Any) -> list[str]:
    """A few lines a person reads: a stage's funnel and its main figures, or a result's scalar fields."""
    if isinstance(obj, dict) and {"stage", "inputs", "kept", "dropped"} <= set(obj):
        drops = ", ".join(f"{reason} {n}" for reason, n in sorted(obj["dropped"].items(), key=lambda kv: -kv[1]))
        figures = [f"{k} {v}" for k, v in sorted(obj.get("extra", {}).items()) if isinstance(v, (int, float))
                   and not isinstance(v, bool) and v]
        lines = [f"{obj['stage']}: {obj['inputs']} in -> {obj['kept']} kept, {obj['inputs'] - obj['kept']} dropped"
                 + (f" ({drops})" if drops else "")]
        return lines + ([f"  {', '.join(figures)}"] if figures else []) + ["  (--json prints the whole record)"]
    if isinstance(obj, dict):
        return [f"{k}: {v}" for k, v in obj.items() if isinstance(v, (str, int, float)) and v not in ("", None)]
    return [str(obj)]


def _pairs(items: list[str] | None, what: str) -> dict[str, str]:
    """Parse NAME=PATH items."""
    out = {}
    for item in items or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise WitError(f"{what}: expected NAME=PATH, got {item!r}")
        out[name] = path
    return out


# ---- stage subcommands -------------------------------------------------------------------------

def cmd_crawl(args: argparse.Namespace) -> None:
    stats = run_crawl(args.inputs, args.out, config_from_args(CrawlConfig, args))
    _print_json(stats.to_dict())


def cmd_filter(args: argparse.Namespace) -> None:
    _print_json(run_filter(args.input, args.out, config_from_args(FilterConfig, args)).to_dict())


def cmd_balance(args: argparse.Namespace) -> None:
    _print_json(run_balance(args.input, args.out, config_from_args(BalanceConfig, args)).to_dict())


def cmd_queries(args: argparse.Namespace) -> None:
    corpus = None
    if args.corpus:
        import pyarrow.dataset as ds

        corpus = (c for b in ds.dataset(args.corpus).to_batches(columns=["caption"]) for c in b.column(0).to_pylist() if c)
    sources = query_sources(args.unigrams, args.bigrams, corpus=corpus, wordnet=not args.no_wordnet)
    save_queries(args.out, [q for qs in sources.values() for q in qs])
    counts = ", ".join(f"{len(qs)} {name}" for name, qs in sources.items())
    print(f"{len(load_queries(args.out))} queries written to {args.out} ({counts})")


def cmd_eval_index(args: argparse.Namespace) -> None:
    _print_json(build_eval_index(args.name, args.path, args.out, config_from_args(EvalIndexConfig, args)).to_dict())


def cmd_dedup(args: argparse.Namespace) -> None:
    stats = run_dedup(args.shards, _pairs(args.eval, "--eval"), args.out, config_from_args(DedupConfig, args))
    _print_json(stats.to_dict())


def cmd_download(args: argparse.Namespace) -> None:
    indexes = {name: Path(p) for name, p in _pairs(args.eval_index, "--eval-index").items()}
    stats = run_download(args.input, args.shards, config_from_args(DownloadConfig, args),
                         eval_indexes=indexes, overlap_dir=args.overlap_dir)
    _print_json(stats.to_dict())


def cmd_train(args: argparse.Namespace) -> None:
    import dataclasses

    _print_json(dataclasses.asdict(run_train(args.shards, args.out, config_from_args(TrainConfig, args))))


def cmd_overlap(args: argparse.Namespace) -> None:
    checkpoint, model = args.checkpoint, args.model
    if checkpoint is None:
        checkpoint, model = latest_checkpoint(args.train_dir)
    _print_json(run_overlap(checkpoint, model, _pairs(args.eval, "--eval"), args.overlap_parquet,
                            args.reports, config_from_args(OverlapConfig, args)))


def cmd_stats(args: argparse.Namespace) -> None:
    report = write_report(args.build_dir)
    print("\n".join(funnel_lines(report) + overlap_lines(report)))


def cmd_dashboard(args: argparse.Namespace) -> None:
    if is_url(args.build_dir):
        if args.serve:
            raise WitError(f"{args.build_dir}: --serve serves a local build directory only (without --serve the "
                           "page is written to the build's reports/)")
        if not Folder(args.build_dir).exists(""):
            raise WitError(f"{args.build_dir}: no such build directory")
        write_report(args.build_dir)
        print(Folder(args.build_dir).loc(f"reports/{PAGE}"))
        return
    build = Path(args.build_dir)
    if not build.is_dir():
        raise WitError(f"{build}: no such build directory")
    if not args.serve:
        write_report(build)
        print(build / "reports" / PAGE)
        return
    with dashboard_server(build, args.host, args.port, args.refresh,
                          log=lambda line: print(line, file=sys.stderr, flush=True)) as server:
        print(server.url, flush=True)  # type: ignore[attr-defined]
        print(f"serving the dashboard of {build} (regenerated when a stage writes); Ctrl-C stops",
              file=sys.stderr, flush=True)
        threading.Event().wait()


# ---- whole builds ------------------------------------------------------------------------------

def cmd_build(args: argparse.Namespace) -> None:
    overrides: dict[str, Any] = {}
    if args.build_dir:
        overrides["build_dir"] = args.build_dir
    if args.stages:
        overrides["stages"] = args.stages
    cfg = build_config(overrides, args.config)  # validate before Prefect starts
    build_wit(config=overrides, config_path=args.config)
    _print_summary(cfg.build_dir)


def _print_summary(build_dir: str) -> None:
    """The funnel and overlap lines of a finished build (a local path or a URL: read where it is)."""
    report = build_report(build_dir)
    if is_url(build_dir):
        page, how = f"{build_dir.rstrip('/')}/reports/{PAGE}", "copy it here and open it in a browser"
    else:
        page = (Path(build_dir) / "reports" / PAGE).resolve()
        how = f"open it in a browser, or: wit dashboard {build_dir} --serve"
    print("\n".join(["", "Funnel:", *funnel_lines(report), "", *overlap_lines(report), "",
                     f"Reports: {build_dir.rstrip('/')}/reports (stats.json, stats.md, overlap.json)",
                     f"Dashboard: {page} ({how})"]))


def cmd_demo(args: argparse.Namespace) -> None:
    run_demo(Path(args.out), n_pairs=args.pairs, port=args.port, seed=args.seed, stages=args.stages)
    _print_summary(str(Path(args.out)))


def cmd_serve(args: argparse.Namespace) -> None:
    params = {"config_path": str(Path(args.config).resolve())} if args.config else {}
    print(f"serving deployment build-wit/{args.name}; start runs with: "
          f"prefect deployment run build-wit/{args.name}", flush=True)
    build_wit.serve(name=args.name, parameters=params)


def cmd_miniweb_generate(args: argparse.Namespace) -> None:
    web = generate_miniweb(args.root, args.base_url, n_pairs=args.pairs, seed=args.seed)
    print(f"mini-web written to {args.root} ({web})")


def cmd_miniweb_serve(args: argparse.Namespace) -> None:
    serve_forever(args.root, host=args.host, port=args.port)


# ---- parser ------------------------------------------------------------------------------------

def _sub(subs: Any, name: str, func: Callable, help: str, config: type | None = None) -> argparse.ArgumentParser:
    p = subs.add_parser(name, help=help, description=help, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.set_defaults(func=func)
    p.add_argument("--json", action="store_true", default=False,
                   help="print the whole result record as JSON (the default when stdout is not a terminal) "
                        "instead of a short summary")
    if config is not None:
        add_config_args(p, config)
    return p


def _stage_parsers(subs: Any) -> None:
    p = _sub(subs, "crawl", cmd_crawl, "Extract <img> alt-text candidates from WARC/WAT archives.", CrawlConfig)
    p.add_argument("inputs", nargs="+", help="WARC/WAT files (gzipped or plain) or globs")
    p.add_argument("--out", default="candidates", help="output folder of candidate parquet parts")
    p = _sub(subs, "filter", cmd_filter, "Drop file-name, non-English, too short/long and duplicate captions.",
             FilterConfig)
    p.add_argument("input", nargs="+", help="candidates: folder(s) of parquet parts, parquet files or globs, "
                   "local or URLs such as s3://bucket/candidates/ (url, caption)")
    p.add_argument("out", help="output folder: OUT/kept and OUT/rejected")
    p = _sub(subs, "balance", cmd_balance, "WIT balancing: keep pairs matching a query, at most ~t per query.",
             BalanceConfig)
    p.add_argument("input", nargs="+", help="kept pairs: folder(s), parquet files or globs, local or URLs (uid, caption)")
    p.add_argument("out", help="output folder of balanced parts (+ _queries/query_counts.parquet)")
    p = _sub(subs, "queries", cmd_queries,
             "Build a query list offline: wordfreq words (+ PMI bigrams of a corpus) + WordNet lemma names.")
    p.add_argument("out", help="query list to write: .json (MetaCLIP metadata.json style) or .txt")
    p.add_argument("--unigrams", type=int, default=200_000, help="most frequent English words to take")
    p.add_argument("--bigrams", type=int, default=100_000, help="highest-PMI bigrams to take from --corpus")
    p.add_argument("--corpus", help="parquet folder with a caption column to mine bigrams from")
    p.add_argument("--no-wordnet", action="store_true", help="leave out the WordNet 3.0 lemma names")
    p = _sub(subs, "eval-index", cmd_eval_index,
             "Perceptually hash an evaluation set (ImageFolder, WebDataset shards or parquet with image bytes).",
             EvalIndexConfig)
    p.add_argument("name", help="eval set name, e.g. cifar10")
    p.add_argument("path", help="ImageFolder root, shards folder/tar, or parquet file")
    p.add_argument("--out", default="eval", help="index folder; writes OUT/NAME/index.parquet")
    p = _sub(subs, "dedup", cmd_dedup, "Find (flag) or remove (drop) eval near-duplicates in any WebDataset shards.",
             DedupConfig)
    p.add_argument("shards", help="folder, tar, glob or URL (s3://bucket/shards/) of WebDataset shards in "
                   "img2dataset's layout")
    p.add_argument("--eval", nargs="+", required=True, metavar="NAME=PATH", help="eval sets or their indexes")
    p.add_argument("--out", required=True, help="writes OUT/overlap.parquet (and clean shards in drop mode); a "
                   "folder or URL")
    p = _sub(subs, "download", cmd_download, "Download, resize and hash images on Ray into WebDataset shards.",
             DownloadConfig)
    p.add_argument("input", nargs="+", help="pairs to download: folder(s), parquet files or globs, local or URLs (url, caption)")
    p.add_argument("shards", help="output shards folder")
    p.add_argument("--eval-index", nargs="*", metavar="NAME=DIR", help="eval indexes to dedup against")
    p.add_argument("--overlap-dir", default="overlap", help="where overlap.parquet is written")
    p = _sub(subs, "train", cmd_train, "Contrastive training with open_clip on the shards. "
             "Options after `--` go to open_clip_train unchanged, e.g. `-- --grad-clip-norm 1.0`.", TrainConfig)
    p.add_argument("shards", help="shards folder (with sizes.json)")
    p.add_argument("out", help="training output folder (logs, checkpoints, results.jsonl)")
    p = _sub(subs, "overlap", cmd_overlap, "Zero-shot accuracy on All / Clean / Overlap subsets (CLIP sec. 5).",
             OverlapConfig)
    p.add_argument("--eval", nargs="+", required=True, metavar="NAME=FOLDER", help="eval sets (ImageFolder)")
    p.add_argument("--overlap-parquet", default="overlap/overlap.parquet", help="dedup results")
    p.add_argument("--train-dir", default="train", help="take the latest checkpoint from here")
    p.add_argument("--checkpoint", help="a checkpoint file instead of --train-dir")
    p.add_argument("--model", help="open_clip model name of --checkpoint")
    p.add_argument("--reports", default="reports", help="where overlap.json and overlap.md are written")


def _build_parsers(subs: Any) -> None:
    p = _sub(subs, "stats", cmd_stats, "Write and print the funnel of a build directory.")
    p.add_argument("build_dir", help="build directory")
    p = _sub(subs, "dashboard", cmd_dashboard, "Write the build's statistics page (reports/dashboard.html) and "
             "print its path; --serve serves it on this machine and regenerates it while the build runs.")
    p.add_argument("build_dir", help="build directory")
    p.add_argument("--serve", action="store_true", help="serve the page over HTTP until Ctrl-C")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (with --serve)")
    p.add_argument("--port", type=int, default=0, help="port to serve on (0: any free port, printed)")
    p.add_argument("--refresh", type=int, default=30, help="seconds between reloads of the served page")
    p = _sub(subs, "build", cmd_build, "Run the build-wit Prefect flow (no server needed) from a config file.")
    p.add_argument("--config", required=True, help="YAML/JSON build config (see configs/)")
    p.add_argument("--build-dir", help="override the config's build_dir")
    p.add_argument("--stages", nargs="+", help="run only these stages")
    p = _sub(subs, "demo", cmd_demo, "Generate the 1k-pair mini-web, serve it on 127.0.0.1 and build it end to end.")
    p.add_argument("--out", default="runs/demo", help="build directory (the mini-web goes to OUT/web)")
    p.add_argument("--pairs", type=int, default=1000, help="candidate pairs in the mini-web")
    p.add_argument("--port", type=int, default=8765, help="mini-web server port (0: any free port)")
    p.add_argument("--seed", type=int, default=0, help="mini-web generation seed")
    p.add_argument("--stages", nargs="+", help="run only these stages")
    p = _sub(subs, "serve", cmd_serve, "Serve the build-wit flow as a deployment for `prefect deployment run`.")
    p.add_argument("--name", default="default", help="deployment name: build-wit/NAME")
    p.add_argument("--config", help="default config_path parameter of the deployment's runs")
    mw = _sub(subs, "mini-web", lambda a: mw.print_help(), "Generate or serve the synthetic mini-web.")
    mws = mw.add_subparsers(dest="miniweb_cmd")
    p = _sub(mws, "generate", cmd_miniweb_generate, "Write images, archives, eval set and manifest.")
    p.add_argument("root")
    p.add_argument("--base-url", required=True, help="URL the server will have, e.g. http://127.0.0.1:8765")
    p.add_argument("--pairs", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p = _sub(mws, "serve", cmd_miniweb_serve, "Serve ROOT/web over HTTP until Ctrl-C.")
    p.add_argument("root")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)


class _OneLineParser(argparse.ArgumentParser):
    """A bad option (unknown, or not of its type) is one line on stderr and exit code 2, like every error
    in the user's input; subcommand parsers inherit this class."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def make_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="wit", description=(__doc__ or "").replace("``", ""),
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    subs = parser.add_subparsers(dest="command", metavar="COMMAND")
    _stage_parsers(subs)
    _build_parsers(subs)
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse ``argv``; with ``wit train``, everything after ``--`` goes to open_clip unchanged."""
    passthrough: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, passthrough = argv[:cut], argv[cut + 1:]
    args = parser.parse_args(argv)
    if passthrough:
        if args.command != "train":
            parser.error("'-- ARGS' passes options to open_clip_train: only with 'wit train'")
        args.extra_args = list(getattr(args, "extra_args", None) or []) + passthrough
    return args


def main(argv: list[str] | None = None) -> int:
    set_quiet_env()  # before anything imports the libraries it quiets
    parser = make_parser()
    args = parse_args(parser, list(sys.argv[1:] if argv is None else argv))
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    global _JSON
    _JSON = bool(getattr(args, "json", False)) or not sys.stdout.isatty()  # scripts and pipes get the record
    try:
        args.func(args)
    except WitError as exc:
        print(f"wit {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"wit {args.command}: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
