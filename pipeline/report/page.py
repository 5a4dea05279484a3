"""HTML building blocks of the dashboard: one self-contained page (inline style and script, images as
``data:`` URIs, a Content-Security-Policy that forbids loading anything else).

Numbers taken from ``reports/stats.json`` carry ``data-stat="<dotted path>"`` so a test can compare what
the page shows with the file.
"""
from __future__ import annotations

import html
from typing import Any, Iterable, Sequence

CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
       "base-uri 'none'; form-action 'none'")

HEAD_START = "<meta charset=utf-8>"  # the served page adds its reload after this

CSS = """
:root{--fg:#1d2433;--muted:#5f6b7a;--line:#e3e7ee;--bg:#f5f7fa;--card:#fff;--accent:#2f7ebc;--ok:#3a9e5c;--bad:#c44e52}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:var(--fg);background:var(--bg)}
header{background:#1d2433;color:#fff;padding:18px 28px 10px}
header h1{margin:0;font-size:20px;font-weight:600}
header .path{margin:2px 0 10px;color:#b8c2d0;font:12px ui-monospace,monospace;word-break:break-all}
nav{display:flex;flex-wrap:wrap;gap:4px 14px;font-size:13px}
nav a{color:#cfe3f5;text-decoration:none}nav a:hover{text-decoration:underline}
nav a.off{color:#7d8898}
main{max-width:1280px;margin:0 auto;padding:18px 24px 60px}
section{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:14px 20px 18px;margin:0 0 18px}
section h2{margin:0 0 10px;font-size:17px}
section h3{margin:16px 0 6px;font-size:14px;color:var(--muted)}
.tiles{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:10px}
.tile{border:1px solid var(--line);border-radius:6px;padding:8px 12px;background:#fafbfd}
.tile .v{font-size:22px;font-weight:600}.tile .k{color:var(--muted);font-size:12px}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(440px,1fr));gap:12px 20px;align-items:start}
.grid3{display:grid;grid-template-columns:minmax(420px,2fr) repeat(2,minmax(180px,1fr));gap:12px 24px;align-items:start}
@media (max-width:900px){.grid3{grid-template-columns:1fr}}
#funnel figure.chart{max-width:980px}
figure.chart{margin:0}figure.chart svg{width:100%;height:auto;display:block}
figure.chart figcaption{color:var(--muted);font-size:12px;margin-top:2px}
table{border-collapse:collapse;font-size:13px;margin:4px 0 8px}
th,td{padding:3px 10px 3px 0;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
th{color:var(--muted);font-weight:600}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.txt{display:inline-block;max-width:520px;overflow-wrap:anywhere}
.notrun{color:var(--muted);background:#f0f2f5;border:1px dashed #c9d0da;border-radius:6px;padding:10px 14px}
.note{color:var(--muted);font-size:12px}
.ok{color:var(--ok);font-weight:600}.bad{color:var(--bad);font-weight:600}
details{margin:4px 0}summary{cursor:pointer}details:target,details[open]{background:#fbfcfe}
a{color:var(--accent)}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:10px}
.gallery figure{margin:0;border:1px solid var(--line);border-radius:6px;padding:6px;background:#fafbfd}
.gallery img{display:block;margin:0 auto 4px;image-rendering:auto;max-width:96px;max-height:96px}
.gallery figcaption{font-size:12px;overflow-wrap:anywhere}
.pairs{display:grid;grid-template-columns:repeat(auto-fill,minmax(250px,1fr));gap:10px}
.pair{border:1px solid var(--line);border-radius:6px;padding:6px;background:#fafbfd;font-size:12px}
.pair .imgs{display:flex;gap:6px;justify-content:center}.pair .imgs div{text-align:center;color:var(--muted)}
.pair img{display:block;width:96px;height:96px;object-fit:contain;background:#eee}
.missing{display:flex;width:96px;height:96px;align-items:center;justify-content:center;background:#eee;color:#999}
img.wide{max-width:100%;height:auto}
"""

# Opens the <details> a link points to (reason -> its sample rows), on load and on every hash change.
SCRIPT = """
(function(){
  function openTarget(){
    var id = decodeURIComponent(location.hash.slice(1));
    var el = id && document.getElementById(id);
    if (el && el.tagName === 'DETAILS') { el.open = true; }
  }
  window.addEventListener('hashchange', openTarget);
  openTarget();
})();
"""


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def num(value: Any, stat: str | None = None, digits: int = 2) -> str:
    """A number for a table cell or tile; ``stat`` names its path in ``reports/stats.json``."""
    attr = f' data-stat="{esc(stat)}"' if stat else ""
    return f"<span class=num{attr}>{esc(fmt(value, digits))}</span>"


def pct(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{100 * x:.{digits}f}%"


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], numeric: Sequence[int] = ()) -> str:
    """A table of already-escaped cells; columns in ``numeric`` are right-aligned."""
    def cells(values: Sequence[str], tag: str) -> str:
        return "".join(f"<{tag}{' class=n' if i in numeric else ''}>{v}</{tag}>" for i, v in enumerate(values))

    body = "".join(f"<tr>{cells(r, 'td')}</tr>" for r in rows)
    return f"<table><thead><tr>{cells([esc(h) for h in headers], 'th')}</tr></thead><tbody>{body}</tbody></table>"


def rows_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A table of dict rows; text columns wrap, numbers align right."""
    numeric = [i for i, c in enumerate(columns) if any(isinstance(r.get(c), (int, float)) for r in rows)]
    body = [[num(r.get(c)) if i in numeric else f"<span class=txt>{esc(r.get(c))}</span>"
             for i, c in enumerate(columns)] for r in rows]
    return table(columns, body, numeric)


def chart(svg: str, caption: str = "") -> str:
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f"<figure class=chart>{svg}{cap}</figure>"


def grid(*items: str) -> str:
    return "<div class=grid>" + "".join(i for i in items if i) + "</div>"


def grid3(wide: str, *narrow: str) -> str:
    """One wide item (a chart) beside narrow ones (short tables)."""
    return "<div class=grid3>" + wide + "".join(narrow) + "</div>"


def tiles(items: Sequence[tuple[str, str]]) -> str:
    """Key figures: ``(label, rendered value)``."""
    return "<div class=tiles>" + "".join(f"<div class=tile><div class=v>{v}</div><div class=k>{esc(k)}</div></div>"
                                         for k, v in items) + "</div>"


def not_run(what: str, hint: str = "") -> str:
    extra = f" {esc(hint)}" if hint else ""
    return f"<div class=notrun><b>not run</b>: {esc(what)}.{extra}</div>"


def section(sid: str, title: str, body: str) -> str:
    return f"<section id={esc(sid)}><h2>{esc(title)}</h2>{body}</section>"


def document(title: str, subtitle: str, nav: Sequence[tuple[str, str, bool]], body: str) -> str:
    """The whole page; ``nav`` is ``(id, label, has data)``."""
    links = " ".join(f"<a href='#{esc(i)}'{'' if ok else ' class=off'}>{esc(label)}</a>" for i, label, ok in nav)
    return (f"<!doctype html><html lang=en><head>{HEAD_START}"
            f"<meta http-equiv=Content-Security-Policy content=\"{CSP}\">"
            f"<meta name=viewport content='width=device-width,initial-scale=1'><title>{esc(title)}</title>"
            f"<style>{CSS}</style></head><body><header><h1>{esc(title)}</h1><div class=path>{esc(subtitle)}</div>"
            f"<nav>{links}</nav></header><main>{body}</main><script>{SCRIPT}</script></body></html>\n")
