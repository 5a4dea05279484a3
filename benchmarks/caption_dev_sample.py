"""Pick the rows of the caption development set (``tests/data/captions_dev_labels.jsonl``).

Reads the real caption files under ``../shared/fixtures/captions/dev/`` (relative to the repository root;
see its SOURCES.md) and writes the chosen rows, without labels, one JSON object a line:
``{"file", "row", "column", "text"}``. The labels in ``tests/data/captions_dev_labels.jsonl`` were then
given by hand, one row at a time, to exactly these rows (see ``tests/data/captions_dev_labels.md``).

Rows (seed 576; each file has its own ``random.Random(f"{SEED}:{file}")``, so the picks of one file
do not depend on the others):

- ``commoncrawl-alt/sample_data.csv``, column ``alt_text``: every record whose alt_text is not blank
  (2,227). ``row`` is the 0-based index of the record among the parsed CSV records (header excluded).
- the same file, column ``img_file``: 100 distinct non-blank image file names (each at its first record),
  those matching ``CAMERA`` first (24: ``IMG_``, ``DSC``, ``SAM_``, ``P4030025``, and also shop IDs like
  ``p384429_1.jpg`` and ``img2.png``), the rest drawn at random.
- ``cc3m/Validation_GCC-1.1.0-Validation.tsv``, column ``caption``: 150 lines at random (``row``: line index).
- ``wit-iglue/test_*.jsonl``, column ``caption_reference_description``: 300 non-blank rows, 28 from each of
  the first three files in name order and 27 from each of the other eight (``row``: line index).
- ``xflickrco-iglue/test_*.jsonl``, column ``sentences`` (``sentences[0]``): 150 rows, 19 from each of the
  first six files in name order and 18 from each of the last two (``row``: line index).

    python benchmarks/caption_dev_sample.py [--out /tmp/caption_dev_rows.jsonl]
"""
from __future__ import annotations

import argparse
import csv
import json
import random
import re
import sys
from pathlib import Path

SEED = 576
DEV = Path(__file__).resolve().parents[1] / ".." / "shared" / "fixtures" / "captions" / "dev"
CAMERA = re.compile(r"^(IMG|DSC|DSCN|DSCF|SAM|PXL|P\d{3}|GOPR|MVIMG|VID|PANO|WP)[_-]?\d", re.I)


def _rng(file: str) -> random.Random:
    return random.Random(f"{SEED}:{file}")


def _spread(files: list[str], total: int) -> dict[str, int]:
    base, extra = divmod(total, len(files))
    return {f: base + (i < extra) for i, f in enumerate(files)}


def commoncrawl() -> list[dict]:
    file = "commoncrawl-alt/sample_data.csv"
    csv.field_size_limit(sys.maxsize)
    with open(DEV / file, newline="", encoding="utf-8") as fh:
        records = list(csv.DictReader(fh))
    out = [{"file": file, "row": i, "column": "alt_text", "text": r["alt_text"]}
           for i, r in enumerate(records) if r["alt_text"].strip()]
    first: dict[str, int] = {}  # each distinct non-blank file name once, at its first record
    for i, r in enumerate(records):
        if r["img_file"].strip():
            first.setdefault(r["img_file"], i)
    camera = [i for name, i in first.items() if CAMERA.match(name)]
    rest = [i for i in first.values() if i not in set(camera)]
    picked = sorted(camera[:100] + _rng(file).sample(rest, max(0, 100 - len(camera))))
    out += [{"file": file, "row": i, "column": "img_file", "text": records[i]["img_file"]} for i in picked]
    return out


def cc3m() -> list[dict]:
    file = "cc3m/Validation_GCC-1.1.0-Validation.tsv"
    lines = (DEV / file).read_text(encoding="utf-8").split("\n")
    lines = lines[:-1] if lines and lines[-1] == "" else lines
    rows = sorted(_rng(file).sample(range(len(lines)), 150))
    return [{"file": file, "row": i, "column": "caption", "text": lines[i].split("\t")[0]} for i in rows]


def _jsonl(file: str) -> list[dict]:
    with open(DEV / file, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def wit() -> list[dict]:
    files = sorted(f"wit-iglue/{p.name}" for p in (DEV / "wit-iglue").glob("test_*.jsonl"))
    out = []
    for file, n in _spread(files, 300).items():
        recs = _jsonl(file)
        ok = [i for i, r in enumerate(recs) if (r.get("caption_reference_description") or "").strip()]
        for i in sorted(_rng(file).sample(ok, n)):
            out.append({"file": file, "row": i, "column": "caption_reference_description",
                        "text": recs[i]["caption_reference_description"]})
    return out


def xflickrco() -> list[dict]:
    files = sorted(f"xflickrco-iglue/{p.name}" for p in (DEV / "xflickrco-iglue").glob("test_*.jsonl"))
    out = []
    for file, n in _spread(files, 150).items():
        recs = _jsonl(file)
        for i in sorted(_rng(file).sample(range(len(recs)), n)):
            out.append({"file": file, "row": i, "column": "sentences", "text": recs[i]["sentences"][0]})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="/tmp/caption_dev_rows.jsonl")
    args = ap.parse_args()
    rows = commoncrawl() + cc3m() + wit() + xflickrco()
    with open(args.out, "w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    counts: dict[str, int] = {}
    for r in rows:
        key = f"{r['file'].split('/')[0]} {r['column']}"
        counts[key] = counts.get(key, 0) + 1
    print(json.dumps({"rows": len(rows), "by_source": counts, "out": args.out}, indent=1))


if __name__ == "__main__":
    main()
