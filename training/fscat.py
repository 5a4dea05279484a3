"""``python -m training.fscat URL``: copy one file of any fsspec file system to stdout.

webdataset reads shards on file systems it has no opener for (s3://, gs://, hf://, ...) through
``pipe:python -m training.fscat URL`` (see :func:`training.shards.webdataset_url`).
"""
from __future__ import annotations

import shutil
import sys


def main(argv: list[str] | None = None) -> int:
    import fsspec

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m training.fscat URL", file=sys.stderr)
        return 2
    try:
        with fsspec.open(args[0], "rb") as src:
            shutil.copyfileobj(src, sys.stdout.buffer, 1 << 20)
    except FileNotFoundError:
        print(f"{args[0]}: not found", file=sys.stderr)
        return 1
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
