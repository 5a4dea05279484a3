"""The Ray job's entry point: ``python -m training.ray_job SHARDS OUT --config-json CFG`` runs ``wit train`` on a
cluster node and prints its result as the last line, for :func:`training.launch.run_train_on_ray` to read."""
from __future__ import annotations

import argparse
import json
import sys

from pipeline.core.config import config_from_dict
from pipeline.core.errors import WitError
from training.config import TrainConfig
from training.launch import EXIT_BAD_INPUT, EXIT_TRANSIENT, RESULT_MARKER
from training.train import run_train


def main(argv: list[str] | None = None) -> int:
    """``wit train`` with the config as JSON; prints the result as the last line (``WIT_TRAIN_RESULT {...}``)."""
    parser = argparse.ArgumentParser(prog="python -m training.ray_job", description=main.__doc__)
    parser.add_argument("shards", help="shards folder or URL ('-': only the shard_urls option)")
    parser.add_argument("out", help="training output folder")
    parser.add_argument("--config-json", default="{}", help="TrainConfig as a JSON object")
    args = parser.parse_args(argv)
    try:
        cfg = config_from_dict(TrainConfig, json.loads(args.config_json))
        result = run_train(None if args.shards == "-" else args.shards, args.out, cfg)
    except WitError as exc:
        print(f"wit train: error: {exc}", file=sys.stderr, flush=True)
        return EXIT_TRANSIENT if getattr(exc, "transient", False) else EXIT_BAD_INPUT
    print(RESULT_MARKER + json.dumps(result.to_dict(), sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
