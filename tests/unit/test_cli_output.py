"""What the terminal shows: a stage's short summary (the whole record with --json or through a pipe)."""
from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from flows.cli import summary_lines

REPO = Path(__file__).resolve().parents[2]


def test_stage_summary_names_the_funnel_and_its_reasons() -> None:
    record = {"stage": "filter", "inputs": 10, "kept": 7, "dropped": {"language": 2, "filename": 1},
              "extra": {"parts": 2, "skipped_parts": 0, "thresholds": {"min_lang_score": 0.16}}}
    lines = summary_lines(record)
    assert lines[0] == "filter: 10 in -> 7 kept, 3 dropped (language 2, filename 1)"
    assert lines[1] == "  parts 2" and "--json" in lines[-1]


def _warc(path: Path) -> Path:
    with open(path, "wb") as fh:
        writer = WARCWriter(fh, gzip=True)
        http = StatusAndHeaders("200 OK", [("Content-Type", "text/html")], protocol="HTTP/1.1")
        body = b"<img src=a.jpg alt='A red bicycle by a wall'><img src=b.jpg>"
        writer.write_record(writer.create_warc_record("http://s.test/", "response", payload=io.BytesIO(body),
                                                      http_headers=http))
    return path


def test_piped_output_is_the_json_record_and_errors_one_line(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "flows.cli", "crawl", str(_warc(tmp_path / "a.warc.gz")), "--out", str(tmp_path / "o")]
    run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["kept"] == 1  # stdout is a pipe here: the whole record, nothing else
    cmd[4] = str(tmp_path / "missing.warc.gz")
    run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and run.stdout == "" and len(run.stderr.strip().splitlines()) == 1
