"""``PartWriter``: candidate rows (refs of one page, or columns of many) streamed to a parquet part."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.crawl.extract import ImageRef, make_uid

SCHEMA = pa.schema([(name, pa.string()) for name in
                    ("uid", "url", "caption", "page_url", "source", "caption_attr")])


class PartWriter:
    """Buffers candidate rows (refs of one page, or columns of many) and writes row groups of ``batch_rows``."""

    def __init__(self, path: Path, batch_rows: int, source: str) -> None:
        # dictionary-encode only the low-cardinality columns (uids, urls and captions rarely repeat)
        self._writer = pq.ParquetWriter(path, SCHEMA, use_dictionary=["page_url", "source", "caption_attr"])
        self._batch_rows = batch_rows
        self._source = source
        self._refs: list[ImageRef] = []
        self._pages: list[str] = []
        self._tables: list[pa.Table] = []
        self._rows = 0

    def add(self, refs: list[ImageRef], page_url: str) -> None:
        """Buffer the candidate ``refs`` of one page."""
        self._refs.extend(refs)
        self._pages.extend([page_url] * len(refs))
        self._rows += len(refs)
        self._write_full()

    def add_columns(self, url: pa.Array, caption: pa.Array, page_url: pa.Array, caption_attr: pa.Array) -> None:
        """Buffer candidates given as columns."""
        self._table_from_refs()
        self._tables.append(self._table(url, caption, page_url, caption_attr))
        self._rows += len(url)
        self._write_full()

    def _table(self, url: Any, caption: Any, page_url: Any, caption_attr: Any) -> pa.Table:
        """The part's table of candidate columns, with their uids and source."""
        if isinstance(url, pa.Array):
            joined = pc.binary_join_element_wise(url, caption, "\t").cast(pa.binary()).to_pylist()
            uids = [hashlib.blake2b(b, digest_size=16).hexdigest() for b in joined]
        else:
            uids = [make_uid(u, c) for u, c in zip(url, caption)]
        n = len(uids)
        return pa.table([pa.array(uids, pa.string()), url, caption, page_url, pa.repeat(self._source, n),
                         caption_attr], schema=SCHEMA)

    def _table_from_refs(self) -> None:
        if self._refs:
            urls, captions, attrs, _ = zip(*self._refs)
            self._tables.append(self._table(list(urls), list(captions), self._pages, list(attrs)))
            self._refs, self._pages = [], []

    def _write_full(self) -> None:
        if self._rows >= self._batch_rows:
            self.flush(whole_groups=True)

    def flush(self, whole_groups: bool = False) -> None:
        """Write the buffered rows in row groups of ``batch_rows`` (keeping a partial last group if asked)."""
        self._table_from_refs()
        if not self._tables:
            return
        table = pa.concat_tables(self._tables)
        end = (len(table) // self._batch_rows) * self._batch_rows if whole_groups else len(table)
        for start in range(0, end, self._batch_rows):
            self._writer.write_table(table.slice(start, min(self._batch_rows, end - start)))
        rest = table.slice(end)
        self._tables, self._rows = ([rest] if len(rest) else []), len(rest)

    def __enter__(self) -> "PartWriter":
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is None:
            self.flush()
        self._writer.close()
