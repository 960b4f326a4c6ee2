"""Self-contained HTML for a report: inline CSS, PNGs embedded as base64 data URIs, no network.

The only script is a few inline lines that sort a table when a column header is clicked (the page reads the
same without it).

Every value shown is rendered from the results dict and sits in an element carrying its dotted path,
``<span data-key="sections.gradients.results.total_norm">0.0123</span>``, so a reader (or a test) can check the
page against ``results.json``. Static text (headings, labels) holds no numbers. Long numeric arrays (histogram
counts, density grids) are drawn in the plots and kept in ``results.json`` rather than printed.
"""

from __future__ import annotations

import base64
import html
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .records import SECTION_TITLES, SECTIONS

__all__ = ["render_html", "write_html", "format_value", "render_index"]

#: lists of scalars longer than this are not printed (they are in results.json and the plots)
MAX_INLINE_LIST = 16
#: tables of records longer than this show their first rows only (per-layer tables of a large model fit)
MAX_TABLE_ROWS = 400

_SORT_JS = (
    "document.querySelectorAll('table.sortable th').forEach(function(th){th.style.cursor='pointer';"
    "th.title='sort';th.addEventListener('click',function(){var t=th.closest('table'),b=t.tBodies[0],"
    "i=Array.prototype.indexOf.call(th.parentNode.children,th),d=th.dataset.d=th.dataset.d==='a'?'d':'a',"
    "key=function(r){var c=r.children[i];if(!c)return '';var s=c.textContent.trim(),n=parseFloat(s);"
    "return isNaN(n)?s.toLowerCase():n;};Array.prototype.slice.call(b.rows).sort(function(x,y){"
    "var p=key(x),q=key(y),o=(typeof p===typeof q)?(p<q?-1:p>q?1:0):(typeof p==='number'?-1:1);"
    "return d==='a'?o:-o;}).forEach(function(r){b.appendChild(r);});});});")

_LABELS: dict[str, str] = {
    "name": "name", "num_parameters": "parameters", "num_variables": "variables", "num_examples": "examples",
    "value": "value", "total_norm": "total gradient norm", "norm": "L2 norm", "rms": "RMS", "max_abs": "max |g|",
    "relative_norm": "norm / largest", "size": "size", "shape": "shape", "layer": "layer",
    "eigenvalues": "top eigenvalues", "std_error": "standard error", "num_matvecs": "matvecs",
    "trace": "trace", "per_layer": "per layer", "per_variable": "per variable", "mean": "mean", "std": "std",
    "min": "min", "max": "max", "median": "median", "q": "quantile", "passed": "passed",
    "max_rel_error": "max relative error", "max_abs_error": "max absolute error", "worst": "worst variable",
    "num_probe_examples": "probe examples", "num_attributed": "examples attributed", "method": "method",
    "feature": "feature", "mean_abs": "mean |attribution|", "delta": "completeness delta",
    "top_eigenvalue": "top Hessian eigenvalue", "loss": "loss", "gradient_norm": "gradient norm",
    "check_passed": "finite-difference check passed", "kind": "kind", "feature_names": "features",
    "inputs": "inputs", "outputs": "outputs", "format": "format", "seed": "seed", "settings": "settings",
    "software": "software", "platform": "platform", "model_file": "model file", "data_file": "data file",
    "sha256": "SHA-256", "model_weights_sha256": "model weights SHA-256", "path": "path", "timing": "timing", "started": "started", "finished": "finished",
    "seconds": "seconds", "trace_per_parameter": "trace / parameters", "density": "spectral density",
    "max_completeness_delta": "max |completeness delta| (IG)", "explained_classes": "explained classes",
    "snr": "signal-to-noise ratio", "mean_gradient_norm": "norm of mean gradient", "median_norm": "median norm",
    "max_norm": "max norm", "eigen_residual_norms": "eigenvalue residuals", "eigen_converged": "Lanczos converged",
    "eigen_num_matvecs": "Lanczos matvecs", "exact": "exact", "num_probes": "probes",
    "integrated_gradients_steps": "IG steps", "mean_abs_saliency": "mean |saliency|",
    "mean_abs_integrated_gradients": "mean |integrated gradients|", "checks": "checks", "check": "check",
    "diagnostics": "what breaks derivatives", "evaluations": "evaluations", "skipped": "skipped",
    "problem": "problem", "where": "where", "detail": "detail", "vectorized": "vectorised",
}

_CSS = """
:root{--fg:#1d2330;--muted:#5b6475;--line:#dde2ea;--bg:#f6f8fb;--ok:#1a7f37;--bad:#b42318;--skip:#8a6d00}
*{box-sizing:border-box}body{margin:0;font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
color:var(--fg);background:var(--bg)}main{max-width:1100px;margin:0 auto;padding:24px}
h1{font-size:26px;margin:0 0 4px}h2{font-size:20px;margin:0 0 8px}h3{font-size:16px;margin:16px 0 6px}
.sub{color:var(--muted);margin-bottom:18px}section{background:#fff;border:1px solid var(--line);
border-radius:8px;padding:18px 20px;margin:16px 0}.cards{display:flex;flex-wrap:wrap;gap:12px;margin:16px 0}
.card{background:#fff;border:1px solid var(--line);border-radius:8px;padding:12px 16px;min-width:180px}
.card .label{color:var(--muted);font-size:13px}.card .v{font-size:20px;font-weight:600}
table{border-collapse:collapse;margin:6px 0 10px;font-size:14px}th,td{border-bottom:1px solid var(--line);
padding:4px 10px;text-align:left;vertical-align:top}td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
th{color:var(--muted);font-weight:600}.badge{display:inline-block;border-radius:10px;padding:0 9px;font-size:12px;
font-weight:600;color:#fff;margin-left:8px;vertical-align:middle}.ok{background:var(--ok)}.failed{background:var(--bad)}
.skipped,.unavailable{background:var(--skip)}.reason{background:#fff6f5;border-left:4px solid var(--bad);
padding:8px 12px;margin:8px 0;white-space:pre-wrap}.reason.note{background:#fffbea;border-color:var(--skip)}
figure{margin:10px 0}figure img{max-width:100%;height:auto;border:1px solid var(--line);border-radius:4px}
figcaption{color:var(--muted);font-size:13px}.mono{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:13px;
word-break:break-all}footer{color:var(--muted);font-size:13px;margin:24px 0}nav a{margin-right:14px}
"""


def format_value(value: Any) -> str:
    """How a value from the results appears on the page (``float`` to 6 significant digits)."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return "n/a"
        return format(value, ".6g")
    return str(value)


def _is_scalar(v: Any) -> bool:
    return v is None or isinstance(v, str | int | float | bool)


def _label(key: str) -> str:
    return _LABELS.get(key, key.replace("_", " "))


def _v(path: str, value: Any, cls: str = "v") -> str:
    num = isinstance(value, int | float) and not isinstance(value, bool)
    klass = f"{cls} mono" if isinstance(value, str) and len(value) >= 32 and " " not in value else cls
    return (f'<span class="{klass}{" n" if num else ""}" data-key="{html.escape(path, quote=True)}">'
            f"{html.escape(format_value(value))}</span>")


def _inline_list(path: str, values: Sequence[Any], sep: str = ", ") -> str:
    return sep.join(_v(f"{path}.{i}", v) for i, v in enumerate(values))


def _render(path: str, value: Any, key: str = "") -> str:
    """Generic rendering of a results node (dict -> table / sub-headings, records -> table)."""
    if _is_scalar(value):
        return _v(path, value)
    if isinstance(value, list):
        if not value:
            return '<span class="muted">none</span>'
        if all(_is_scalar(v) for v in value):
            if len(value) > MAX_INLINE_LIST:
                return '<span class="muted">(in results.json and the plot)</span>'
            return _inline_list(path, value, " × " if key == "shape" else ", ")
        if all(isinstance(v, Mapping) for v in value):
            return _records_table(path, value)
        return '<span class="muted">(in results.json)</span>'
    if isinstance(value, Mapping):
        return _dict_block(path, value)
    return _v(path, str(value))


def _only_long_lists(v: Any) -> bool:
    """A dict of long numeric arrays (histogram counts, density grid): drawn in a plot, not printed."""
    return (isinstance(v, Mapping) and bool(v)
            and all(isinstance(e, list) and len(e) > MAX_INLINE_LIST for e in v.values()))


def _cell(path: str, key: str, value: Any) -> str:
    if isinstance(value, list) and not value:
        return '<td><span class="muted">none</span></td>'
    if isinstance(value, list) and all(_is_scalar(v) for v in value) and len(value) <= MAX_INLINE_LIST:
        return f"<td>{_inline_list(path, value, ' × ' if key == 'shape' else ', ')}</td>"
    if _is_scalar(value):
        num = isinstance(value, int | float) and not isinstance(value, bool)
        return f'<td class="{"num" if num else ""}">{_v(path, value)}</td>'
    return "<td>(in results.json)</td>"


def _records_table(path: str, rows: Sequence[Mapping[str, Any]]) -> str:
    cols: list[str] = []
    for r in rows:
        cols.extend(k for k in r if k not in cols)
    head = "".join(f"<th>{html.escape(_label(c))}</th>" for c in cols)
    body = []
    for i, r in enumerate(rows[:MAX_TABLE_ROWS]):
        cells = "".join(_cell(f"{path}.{i}.{c}", c, r[c]) if c in r else "<td></td>" for c in cols)
        body.append(f"<tr>{cells}</tr>")
    more = ('<p class="sub">Only the first rows are shown; every row is in results.json.</p>'
            if len(rows) > MAX_TABLE_ROWS else "")
    return f'<table class="sortable"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>{more}'


def _dict_block(path: str, d: Mapping[str, Any]) -> str:
    scalars = [(k, v) for k, v in d.items() if _is_scalar(v)
               or (isinstance(v, list) and all(_is_scalar(e) for e in v) and len(v) <= MAX_INLINE_LIST)]
    nested = [(k, v) for k, v in d.items() if (k, v) not in scalars and not _only_long_lists(v)
              and not (isinstance(v, list) and v and all(_is_scalar(e) for e in v))]
    parts = []
    if scalars:
        rows = "".join(f"<tr><th>{html.escape(_label(k))}</th>{_cell(f'{path}.{k}', k, v)}</tr>"
                       for k, v in scalars)
        parts.append(f"<table><tbody>{rows}</tbody></table>")
    for k, v in nested:
        parts.append(f"<h3>{html.escape(_label(k))}</h3>{_render(f'{path}.{k}', v, k)}")
    return "".join(parts)


def _figure(path: str, plot: Mapping[str, Any], directory: Path | None) -> str:
    file = plot.get("file")
    if directory is None or not file or not (directory / file).is_file():
        return ""
    data = base64.b64encode((directory / file).read_bytes()).decode("ascii")
    caption = plot.get("caption") or ""
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption, quote=True)}">'
            f"<figcaption>{_v(f'{path}.caption', caption)}</figcaption></figure>")


def _section(key: str, sec: Mapping[str, Any], directory: Path | None) -> str:
    path = f"sections.{key}"
    status = str(sec.get("status", "ok"))
    title = sec.get("title") or SECTION_TITLES.get(key, key)
    out = [f'<section id="{html.escape(key)}"><h2>{_v(f"{path}.title", title)}'
           f'<span class="badge {html.escape(status)}">{_v(f"{path}.status", status)}</span></h2>']
    if sec.get("reason"):
        note = " note" if status in ("skipped", "unavailable") else ""
        out.append(f'<div class="reason{note}">{_v(f"{path}.reason", sec["reason"])}</div>')
    for i, note in enumerate(sec.get("notes") or []):
        out.append(f'<div class="reason note">{_v(f"{path}.notes.{i}", note)}</div>')
    for i, plot in enumerate(sec.get("plots") or []):
        out.append(_figure(f"{path}.plots.{i}", plot, directory))
    res = sec.get("results") or {}
    if res:
        out.append(_render(f"{path}.results", res))
    out.append("</section>")
    return "".join(out)


def _cards(summary: Mapping[str, Any]) -> str:
    cards = []
    for k, v in summary.items():
        if _is_scalar(v):
            cards.append(f'<div class="card"><div class="label">{html.escape(_label(k))}</div>'
                         f'{_v(f"summary.{k}", v)}</div>')
    return f'<div class="cards">{"".join(cards)}</div>' if cards else ""


def _page(title: str, body: str) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            "<link rel=\"icon\" href=\"data:,\">"
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>"
            f"<body><main>{body}</main><script>{_SORT_JS}</script></body></html>\n")


def render_html(results: Mapping[str, Any], directory: str | os.PathLike | None = None) -> str:
    """The report page for ``results``; PNGs named in the sections are read from ``directory`` and embedded."""
    d = Path(directory) if directory is not None else None
    title = str(results.get("title") or "tfpartials report")
    model, data, loss = results.get("model", {}), results.get("data", {}), results.get("loss", {})
    sub = []
    if "name" in model:
        sub.append(f"model {_v('model.name', model['name'])}")
    if "num_parameters" in model:
        sub.append(f"{_v('model.num_parameters', model['num_parameters'])} parameters")
    if "num_examples" in data:
        sub.append(f"{_v('data.num_examples', data['num_examples'])} examples")
    if "name" in loss:
        sub.append(f"loss {_v('loss.name', loss['name'])}")
    sections = results.get("sections", {})
    keys = [k for k in SECTIONS if k in sections] + [k for k in sections if k not in SECTIONS]
    nav = "".join(f'<a href="#{html.escape(k)}">{html.escape(_label(k))}</a>' for k in keys)
    body = [f"<h1>{_v('title', title)}</h1>", f'<div class="sub">{" · ".join(sub)}</div>',
            f"<nav>{nav}</nav>", _cards(results.get("summary", {}))]
    overview = {k: results[k] for k in ("model", "data", "loss") if isinstance(results.get(k), Mapping)}
    if overview:
        body.append('<section id="overview"><h2>Model and data</h2>')
        body.extend(f"<h3>{html.escape(_label(k))}</h3>{_render(k, v, k)}" for k, v in overview.items())
        body.append("</section>")
    body.extend(_section(k, sections[k], d) for k in keys)
    if isinstance(results.get("provenance"), Mapping):
        body.append('<section id="provenance"><h2>Provenance</h2>'
                    f"{_render('provenance', results['provenance'])}</section>")
    body.append("<footer>Made by tfpartials. Every number on this page is read from results.json; "
                "the path of each is in its data-key attribute.</footer>")
    return _page(title, "".join(body))


def write_html(results: Mapping[str, Any], directory: str | os.PathLike, name: str = "index.html") -> Path:
    """Render ``results`` with the PNGs in ``directory`` and write ``directory/name``."""
    d = Path(directory)
    path = d / name
    path.write_text(render_html(results, d), encoding="utf-8")
    return path


def render_index(title: str, entries: Sequence[Mapping[str, Any]]) -> str:
    """A page linking several reports: entries ``{"href", "title", "summary": {...}}`` (values tagged)."""
    items = []
    for i, e in enumerate(entries):
        cards = "".join(f'<div class="card"><div class="label">{html.escape(_label(k))}</div>'
                        f'{_v(f"reports.{i}.summary.{k}", v)}</div>'
                        for k, v in (e.get("summary") or {}).items() if _is_scalar(v))
        items.append(f'<section><h2><a href="{html.escape(str(e["href"]), quote=True)}">'
                     f'{_v(f"reports.{i}.title", e.get("title", e["href"]))}</a></h2>'
                     f'<div class="cards">{cards}</div></section>')
    return _page(title, f"<h1>{html.escape(title)}</h1>{''.join(items)}")
