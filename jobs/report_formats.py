"""Render a report (a plain dict made by the report job) as HTML, CSV, JSON or PDF bytes.

The report dict is the source of truth and the JSON format is that dict as it is. HTML and PDF
show the same content, built once per render as a list of blocks (:class:`_Table`,
:class:`_Chart`), so the two cannot drift apart:

* **HTML** — one standalone page: Jinja2 with autoescaping (every value from the report is
  escaped), an inline ``<style>``, no script, no external resource (a Content-Security-Policy
  ``<meta>`` says so to the browser); the activity chart is a PNG in a ``data:`` URI.
* **PDF** — fpdf2 (pure Python). Text is real text (extractable, searchable), set in DejaVu Sans,
  which matplotlib ships (so it is always there): Latin, Greek, Cyrillic, Arabic, Hebrew and
  more. IPAexGothic, which the ``matplotlib-fontja`` package ships, is the fallback for
  Japanese (kana and kanji, which also covers most Chinese characters in use). A report with
  right-to-left text is laid out with text shaping (uharfbuzz): right-to-left runs in reading
  order, Arabic letters joined. A character no font has (e.g. Hangul, Thai, Devanagari) is
  printed as U+FFFD "�" rather than vanishing or failing; invisible ones (format controls,
  variation selectors) are dropped.
* **CSV** — one table per report type, written by the ``csv`` module (RFC 4180, ``\\r\\n`` rows,
  UTF-8 without BOM). Cells with text from users (file names, summaries, errors) that start with
  ``= + - @`` get a leading ``'`` so a spreadsheet does not run them as formulas (OWASP "CSV
  injection").
* **Chart** — "jobs per hour by outcome": stacked bars drawn with matplotlib's object API
  (``Figure`` + ``FigureCanvasAgg``), never ``pyplot``, so no global backend or state is touched
  and renders in threads or forked workers do not interfere.

Report shapes (timestamps are ISO-8601 UTC strings):

* common keys: ``type`` (``"activity"`` or ``"documents"``), ``title``, ``generated_at``, ``params``;
* activity: ``since``, ``until``, ``total_jobs``, ``by_kind_status`` (``kind``, ``status``,
  ``count``), ``queue_wait_seconds`` and ``run_seconds`` (``p50``, ``p95``: float or None),
  ``per_hour`` (``hour``, ``finished``, ``failed``, ``stopped``, ``canceled``),
  ``failures_by_code`` (``error_code``, ``count``, ``example``);
* documents: ``documents`` (``id``, ``filename``, ``status``, ``pages``, ``chars``, ``chunks``,
  ``warnings``, ``summary``, ``summary_method``, ``error``, ``error_code``), ``not_finished``
  (``id``, ``filename``, ``status``, ``error_code``, ``error``: the documents whose job did not
  finish) and ``missing_ids`` (requested ids with no document, e.g. deleted).

HTML and PDF table the outcomes per hour up to ``MAX_HOUR_ROWS`` listed hours and per day beyond
(the chart, CSV and JSON keep every hour). Missing keys render as empty sections or "—", so a
partial report still renders.
"""

from __future__ import annotations

import base64
import csv
import importlib.util
import io
import json
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import cache
from pathlib import Path
from typing import Any

from webapp.core.report_files import CONTENT_TYPES, FORMATS, REPORT_TYPES  # noqa: F401  (re-exported)
#: The outcomes a finished job can have, in the order the chart stacks them (bottom first).
OUTCOMES = ("finished", "failed", "stopped", "canceled")
OUTCOME_COLOURS = {"finished": "#2e7d32", "failed": "#c62828", "stopped": "#ef8f00", "canceled": "#9e9e9e"}
CHART_TITLE = "Jobs per hour by outcome"
#: Chart size: 9 × 3.2 inches at 150 dpi (1350 × 480 pixels), sharp in print and on screens.
CHART_SIZE_INCHES = (9.0, 3.2)
CHART_DPI = 150
#: More listed hours than this are tabled per day in HTML and PDF (CSV and JSON keep the hours).
MAX_HOUR_ROWS = 48
DASH = "—"


def render_report(report: dict[str, Any], fmt: str) -> bytes:
    """Render ``report`` in format ``fmt``.

    Args:
        report: an activity or documents report (see the module docstring for the keys).
        fmt: one of :data:`FORMATS`; serve the bytes with ``CONTENT_TYPES[fmt]``.

    Returns:
        The rendered report: UTF-8 text for html, csv and json; a PDF document for pdf.
        Measured on this machine: html ≈ 0.3 s for an activity report (the chart), PDF ≈ 1 s
        plus ≈ 15 ms per document row (≈ 40 ms when right-to-left text turns shaping on).

    Raises:
        ValueError: ``fmt`` is not one of :data:`FORMATS`, or (html, csv, pdf) the report's
            ``type`` is not one of :data:`REPORT_TYPES`.
        TypeError: (json) the report holds a value JSON cannot represent.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown report format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if fmt == "json":
        return (json.dumps(report, ensure_ascii=False, indent=2) + "\n").encode("utf-8")
    kind = report.get("type")
    if kind not in REPORT_TYPES:
        raise ValueError(f"unknown report type {kind!r}; expected one of {', '.join(REPORT_TYPES)}")
    if fmt == "csv":
        return _render_csv(report)
    blocks = _activity_blocks(report) if kind == "activity" else _documents_blocks(report)
    if fmt == "html":
        return _render_html(report, blocks)
    return _render_pdf(report, blocks)


# --- the content, shared by HTML and PDF ---------------------------------------------------------


@dataclass
class _Table:
    """A titled table of display strings. ``headers`` None: a two-column label/value list."""

    title: str
    headers: list[str] | None
    rows: list[list[str]]
    numeric: set[int] = field(default_factory=set)  # right-aligned columns
    widths: tuple[float, ...] | None = None  # relative column widths in the PDF
    empty: str = "None."  # shown instead of an empty table


@dataclass
class _Chart:
    title: str
    png: bytes
    alt: str


def _subtitle(report: dict[str, Any]) -> list[str]:
    lines = [f"Generated {_when(report.get('generated_at'))}"]
    if report.get("type") == "activity":
        lines.insert(0, f"Period {_when(report.get('since'))} to {_when(report.get('until'))}")
    return lines


def _params_table(report: dict[str, Any]) -> _Table:
    params = report.get("params") or {}
    rows = [[str(key), _param_value(value)] for key, value in params.items()]
    return _Table("Parameters", None, rows, widths=(1, 3), empty="Defaults.")


def _activity_blocks(report: dict[str, Any]) -> list[_Table | _Chart]:
    wait = report.get("queue_wait_seconds") or {}
    run = report.get("run_seconds") or {}
    per_hour = report.get("per_hour") or []
    totals = {outcome: sum(int(hour.get(outcome) or 0) for hour in per_hour) for outcome in OUTCOMES}
    overview = [
        ["Jobs", _count(report.get("total_jobs"))],
        *[[f"Jobs {outcome}", _count(totals[outcome])] for outcome in OUTCOMES],
    ]
    return [
        _Table("Overview", None, overview, widths=(1, 3)),
        _Table("Timing", ["Measure", "Median (p50)", "95th percentile (p95)"],
               [["Queue wait", _seconds(wait.get("p50")), _seconds(wait.get("p95"))],
                ["Run time", _seconds(run.get("p50")), _seconds(run.get("p95"))]],
               numeric={1, 2}, widths=(2, 1.5, 1.5)),
        _Chart(CHART_TITLE, activity_chart_png(report), _chart_alt(report, totals)),
        _Table("Jobs by kind and status", ["Kind", "Status", "Jobs"],
               [[str(row.get("kind", "")), str(row.get("status", "")), _count(row.get("count"))]
                for row in report.get("by_kind_status") or []],
               numeric={2}, widths=(2, 2, 1), empty="No jobs in this period."),
        _outcomes_table(per_hour),
        _Table("Failures by error code", ["Error code", "Jobs", "Example"],
               [[str(row.get("error_code", "")), _count(row.get("count")), str(row.get("example") or DASH)]
                for row in report.get("failures_by_code") or []],
               numeric={1}, widths=(1.4, 0.6, 4), empty="No failures."),
        _params_table(report),
    ]


def _outcomes_table(per_hour: list[dict[str, Any]]) -> _Table:
    """Outcomes per listed hour; per day when more than ``MAX_HOUR_ROWS`` hours are listed (a
    month of hours would be 720 rows, 22 PDF pages: the hours stay in the chart, CSV and JSON)."""
    if len(per_hour) <= MAX_HOUR_ROWS:
        title, first = "Jobs per hour (UTC)", "Hour"
        periods = [(_when(hour.get("hour"), with_zone=False), hour) for hour in per_hour]
    else:
        title, first = "Jobs per day (UTC)", "Day"
        days: dict[str, dict[str, int]] = {}
        for hour in per_hour:
            day = days.setdefault(_when(hour.get("hour"), with_zone=False)[:10], dict.fromkeys(OUTCOMES, 0))
            for outcome in OUTCOMES:
                day[outcome] += int(hour.get(outcome) or 0)
        periods = list(days.items())
    rows = [[label, *[_count(counts.get(o) or 0) for o in OUTCOMES],
             _count(sum(int(counts.get(o) or 0) for o in OUTCOMES))] for label, counts in periods]
    return _Table(title, [first, *[o.capitalize() for o in OUTCOMES], "Total"], rows, numeric={1, 2, 3, 4, 5},
                  widths=(2.2, 1, 1, 1, 1, 1), empty="No jobs ended in this period.")


def _documents_blocks(report: dict[str, Any]) -> list[_Table | _Chart]:
    documents = report.get("documents") or []
    statuses: dict[str, int] = {}
    for document in documents:
        statuses[str(document.get("status"))] = statuses.get(str(document.get("status")), 0) + 1
    overview = [["Documents", _count(len(documents))],
                *[[f"Status {status}", _count(count)] for status, count in sorted(statuses.items())]]
    rows = []
    for document in documents:
        notes = [str(w) for w in document.get("warnings") or []]
        if document.get("error"):
            notes.append(f"Error: {document['error']}")
        rows.append([str(document.get("filename") or document.get("id") or DASH), str(document.get("status") or DASH),
                     _count(document.get("pages")), _count(document.get("chars")), _count(document.get("chunks")),
                     "; ".join(notes) or DASH])
    not_finished = [[str(entry.get("filename") or entry.get("id") or DASH), str(entry.get("status") or DASH),
                     str(entry.get("error_code") or DASH), str(entry.get("error") or DASH)]
                    for entry in report.get("not_finished") or []]
    not_finished += [[str(document_id), "deleted", DASH, "the document no longer exists"]
                     for document_id in report.get("missing_ids") or []]
    summaries = [[str(document.get("filename") or document.get("id") or DASH),
                  str(document.get("summary") or DASH), str(document.get("summary_method") or DASH)]
                 for document in documents]
    return [
        _Table("Overview", None, overview, widths=(1, 3)),
        _Table("Documents", ["Document", "Status", "Pages", "Characters", "Chunks", "Warnings and errors"], rows,
               numeric={2, 3, 4}, widths=(3, 1.3, 1, 1.4, 1, 3), empty="No documents."),
        _Table("Documents that did not finish", ["Document", "Status", "Error code", "Reason"], not_finished,
               widths=(3, 1.3, 1.6, 4), empty="Every document finished."),
        _Table("Summaries", ["Document", "Summary", "Method"], summaries, widths=(2, 5, 1.5), empty="No documents."),
        _params_table(report),
    ]


def _when(value: Any, *, with_zone: bool = True) -> str:
    """An ISO-8601 timestamp as "2026-11-21 15:00 UTC"; anything unparseable as it is; None as "—"."""
    if value in (None, ""):
        return DASH
    moment = _parse_time(value)
    if moment is None:
        return str(value)
    return moment.strftime("%Y-%m-%d %H:%M") + (" UTC" if with_zone else "")


def _parse_time(value: Any) -> datetime | None:
    """An ISO-8601 timestamp as an aware UTC datetime (a naive one is taken as UTC); None if unparseable."""
    if isinstance(value, datetime):
        moment = value
    else:
        try:
            moment = datetime.fromisoformat(str(value))
        except ValueError:
            return None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def _count(value: Any) -> str:
    return DASH if value is None else f"{int(value):,}"


def _seconds(value: Any) -> str:
    """Seconds for people: "0.42 s", "12.3 s", "4.5 min", "2.1 h"; None as "—"."""
    if value is None:
        return DASH
    value = float(value)
    if value < 10:
        return f"{value:.2f} s"
    if value < 120:
        return f"{value:.1f} s"
    if value < 7200:
        return f"{value / 60:.1f} min"
    return f"{value / 3600:.1f} h"


def _param_value(value: Any) -> str:
    if value is None:
        return DASH
    if isinstance(value, (list, tuple)):
        return ", ".join(str(item) for item in value) or DASH
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    return str(value)


def _chart_alt(report: dict[str, Any], totals: dict[str, int]) -> str:
    if not report.get("per_hour"):
        return f"{CHART_TITLE}: no jobs in this period."
    counts = ", ".join(f"{totals[outcome]:,} {outcome}" for outcome in OUTCOMES)
    return f"{CHART_TITLE}, {len(report['per_hour'])} hours: {counts}."


# --- chart ---------------------------------------------------------------------------------------


def activity_chart_png(report: dict[str, Any]) -> bytes:
    """The activity report's chart, "jobs per hour by outcome", as a PNG.

    One stacked bar per listed hour (finished, failed, stopped, canceled from the bottom), on a
    UTC time axis spanning the report's period. Each outcome is one ``PolyCollection`` of
    rectangles, so a month of hours (720 bars) draws as fast as a day. Bars have gaps up to a
    week of hours and touch beyond that. A period without jobs still gets its axes, the legend
    and the note "No jobs in this period".

    Args:
        report: an activity report; uses ``per_hour``, ``since`` and ``until``.

    Returns:
        PNG bytes, 1350 × 480 pixels (``CHART_SIZE_INCHES`` at ``CHART_DPI``).
    """
    import matplotlib.dates as mdates
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import PolyCollection
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    hours = [(moment, row) for row in report.get("per_hour") or []
             if (moment := _parse_time(row.get("hour"))) is not None]
    since, until = _parse_time(report.get("since")), _parse_time(report.get("until"))
    if not (since and until and since < until):
        since = min((moment for moment, _ in hours), default=None)
        until = max((moment for moment, _ in hours), default=None)
    if since is None or until is None:  # no period and no hours: the last day
        until = datetime.now(timezone.utc)
        since = until - timedelta(days=1)
    if since == until:
        until = since + timedelta(hours=1)
    span_hours = (until - since) / timedelta(hours=1)

    figure = Figure(figsize=CHART_SIZE_INCHES, dpi=CHART_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    left = mdates.date2num([moment for moment, _ in hours]) if hours else np.zeros(0)
    right = left + (0.85 if span_hours <= 168 else 1.0) / 24
    bottom = np.zeros(len(hours))
    for outcome in OUTCOMES:
        top = bottom + np.array([float(row.get(outcome) or 0) for _, row in hours])
        rectangles = np.stack([np.column_stack([left, bottom]), np.column_stack([left, top]),
                               np.column_stack([right, top]), np.column_stack([right, bottom])], axis=1)
        axes.add_collection(PolyCollection(rectangles[top > bottom], facecolors=OUTCOME_COLOURS[outcome],
                                           edgecolors="none"))
        bottom = top

    axes.set_xlim(mdates.date2num(since), mdates.date2num(until))
    highest = float(bottom.max()) if len(bottom) else 0.0
    axes.set_ylim(0, max(1.0, highest * 1.05))
    locator = mdates.AutoDateLocator(tz=timezone.utc)
    axes.xaxis.set_major_locator(locator)
    axes.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=timezone.utc))
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    if highest == 0:
        axes.text(0.5, 0.5, "No jobs in this period", transform=axes.transAxes, ha="center", va="center",
                  fontsize=11, color="#555555")
    axes.set_ylabel("jobs", fontsize=9)
    axes.set_xlabel("hour (UTC)", fontsize=9)
    axes.tick_params(labelsize=8)
    axes.grid(axis="y", color="#dddddd", linewidth=0.6)
    axes.set_axisbelow(True)
    for side in ("top", "right"):
        axes.spines[side].set_visible(False)
    axes.legend(handles=[Patch(color=OUTCOME_COLOURS[o], label=o) for o in OUTCOMES], loc="upper right",
                ncols=len(OUTCOMES), fontsize=8, frameon=False, bbox_to_anchor=(1, 1.12))
    out = io.BytesIO()
    figure.savefig(out, format="png", metadata={"Software": None})
    return out.getvalue()


# --- HTML ----------------------------------------------------------------------------------------

_HTML_TEMPLATE = """\
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<meta name="generator" content="Docket">
<title>{{ title }}</title>
<style>
  body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Noto Sans", sans-serif;
         color: #1d1d1f; margin: 2rem auto; max-width: 72rem; padding: 0 1.5rem; }
  h1 { font-size: 1.6rem; margin-bottom: .2rem; }
  h2 { font-size: 1.15rem; margin: 2rem 0 .6rem; border-bottom: 1px solid #ddd; padding-bottom: .2rem; }
  .subtitle { color: #555; margin: 0; }
  table { border-collapse: collapse; width: 100%; font-size: .9rem; }
  th, td { text-align: left; vertical-align: top; padding: .35rem .6rem; border-bottom: 1px solid #e5e5e5; }
  thead th { background: #f3f3f3; border-bottom: 1px solid #ccc; }
  table.pairs th { width: 14rem; font-weight: 600; background: none; }
  td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
  td.long { overflow-wrap: anywhere; min-width: 12rem; }
  .empty { color: #666; font-style: italic; }
  figure { margin: 0; }
  figure img { max-width: 100%; height: auto; }
  footer { margin-top: 2.5rem; color: #777; font-size: .8rem; }
</style>
</head>
<body>
{% macro attrs(block, index, cell) -%}
  {% if index in block.numeric %} class="num"
  {%- else %} dir="auto"{% if cell | length > 40 %} class="long"{% endif %}{% endif %}
{%- endmacro %}
<h1>{{ title }}</h1>
{% for line in subtitle %}<p class="subtitle">{{ line }}</p>
{% endfor %}
{% for block in blocks %}
<section>
<h2>{{ block.title }}</h2>
{% if block.png is defined %}
<figure><img src="data:image/png;base64,{{ block.png | b64 }}" alt="{{ block.alt }}"
             width="900" height="320"></figure>
{% elif not block.rows %}
<p class="empty">{{ block.empty }}</p>
{% elif block.headers is none %}
<table class="pairs"><tbody>
{% for label, value in block.rows %}<tr><th scope="row">{{ label }}</th><td dir="auto">{{ value }}</td></tr>
{% endfor %}</tbody></table>
{% else %}
<table><thead><tr>
{% for header in block.headers %}<th scope="col"{{ attrs(block, loop.index0, "") }}>{{ header }}</th>{% endfor %}
</tr></thead><tbody>
{% for row in block.rows %}
<tr>{% for cell in row %}<td{{ attrs(block, loop.index0, cell) }}>{{ cell }}</td>{% endfor %}</tr>
{% endfor %}
</tbody></table>
{% endif %}
</section>
{% endfor %}
<footer>Docket report · {{ report_type }} · generated {{ generated }}</footer>
</body>
</html>
"""


@cache
def _html_template():
    from jinja2 import Environment, StrictUndefined

    environment = Environment(autoescape=True, undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    environment.filters["b64"] = lambda data: base64.b64encode(data).decode("ascii")
    return environment.from_string(_HTML_TEMPLATE)


def _render_html(report: dict[str, Any], blocks: list[_Table | _Chart]) -> bytes:
    page = _html_template().render(
        title=str(report.get("title") or "Docket report"),
        subtitle=_subtitle(report),
        blocks=blocks,
        report_type=report["type"],
        generated=_when(report.get("generated_at")),
    )
    return page.encode("utf-8")


# --- CSV -----------------------------------------------------------------------------------------

ACTIVITY_CSV_COLUMNS = ("hour", *OUTCOMES, "total")
DOCUMENTS_CSV_COLUMNS = ("id", "filename", "status", "pages", "chars", "chunks", "warnings", "summary",
                         "summary_method", "error")


def _render_csv(report: dict[str, Any]) -> bytes:
    """Activity: one row per listed hour (ISO start of the hour, the four outcome counts, their
    sum), then a ``total`` row. Documents: one row per document, warnings joined by ``"; "``,
    None as an empty cell."""
    out = io.StringIO(newline="")
    writer = csv.writer(out)
    if report["type"] == "activity":
        writer.writerow(ACTIVITY_CSV_COLUMNS)
        totals = dict.fromkeys(OUTCOMES, 0)
        for hour in report.get("per_hour") or []:
            counts = [int(hour.get(outcome) or 0) for outcome in OUTCOMES]
            for outcome, count in zip(OUTCOMES, counts):
                totals[outcome] += count
            writer.writerow([hour.get("hour"), *counts, sum(counts)])
        writer.writerow(["total", *totals.values(), sum(totals.values())])
    else:
        writer.writerow(DOCUMENTS_CSV_COLUMNS)
        for document in report.get("documents") or []:
            row = {**document, "warnings": "; ".join(str(w) for w in document.get("warnings") or [])}
            writer.writerow([_csv_cell(row.get(column)) for column in DOCUMENTS_CSV_COLUMNS])
    return out.getvalue().encode("utf-8")


def _csv_cell(value: Any) -> Any:
    """None as an empty cell; text that a spreadsheet would run as a formula gets a leading ``'``."""
    if value is None:
        return ""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


# --- PDF -----------------------------------------------------------------------------------------

#: The PDF's fonts: (family, style, file). DejaVu Sans comes with matplotlib.
_MPL_FONTS = (("DejaVu", "", "DejaVuSans.ttf"), ("DejaVu", "B", "DejaVuSans-Bold.ttf"),
              ("DejaVu", "I", "DejaVuSans-Oblique.ttf"))
_FALLBACK_FAMILY = "IPAexGothic"


@cache
def _font_files() -> tuple[tuple[str, str, Path], ...]:
    """The PDF fonts that exist here: DejaVu Sans (regular, bold, oblique) and, when the
    ``matplotlib-fontja`` package is installed, IPAexGothic for Japanese.

    The fallback font's file is located without importing ``matplotlib_fontja`` (importing it
    changes matplotlib's global default font).
    """
    import matplotlib

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    fonts = [(family, style, folder / name) for family, style, name in _MPL_FONTS]
    spec = importlib.util.find_spec("matplotlib_fontja")
    if spec and spec.submodule_search_locations:
        ipaex = Path(next(iter(spec.submodule_search_locations))) / "fonts" / "ipaexg.ttf"
        if ipaex.is_file():
            fonts.append((_FALLBACK_FAMILY, "", ipaex))
    return tuple(fonts)


@cache
def _covered_code_points() -> frozenset[int]:
    """Every code point that the regular DejaVu Sans or a fallback font has a glyph for."""
    from fontTools.ttLib import TTFont

    covered: set[int] = set()
    for _, style, path in _font_files():
        if style == "":
            with TTFont(path, lazy=True) as font:
                covered.update(font.getBestCmap())
    return frozenset(covered)


_INVISIBLE = {"Cc", "Cf", "Cs", "Co", "Cn", "Mn", "Me", "Zl", "Zp"}


def _pdf_text(text: str) -> str:
    """``text`` with what no font can draw replaced: visible characters by U+FFFD, invisible ones
    (controls, format characters, combining marks, variation selectors) dropped; tabs as spaces."""
    covered = _covered_code_points()
    if all(ord(ch) in covered or ch == "\n" for ch in text):
        return text
    out = []
    for ch in text:
        if ord(ch) in covered or ch == "\n":
            out.append(ch)
        elif ch == "\t":
            out.append(" ")
        elif unicodedata.category(ch) not in _INVISIBLE:
            out.append("\ufffd")
    return "".join(out)


def _needs_shaping(title: str, blocks: list[_Table | _Chart]) -> bool:
    """Whether any text is right-to-left (Arabic, Hebrew, …): only then is text shaping turned on.

    Shaping (uharfbuzz) orders right-to-left runs and picks Arabic joining forms; it also makes
    rendering about 2.5 times slower (measured: 480 document rows, 7.5 s → 19 s), and text in
    the scripts the fonts cover needs it for nothing else.
    """
    texts = [title] + [block.title for block in blocks]
    for block in blocks:
        if isinstance(block, _Table):
            texts.extend(cell for row in block.rows for cell in row)
    return any(unicodedata.bidirectional(ch) in ("R", "AL") for text in texts for ch in text)


def _render_pdf(report: dict[str, Any], blocks: list[_Table | _Chart]) -> bytes:
    from fpdf import FPDF
    from fpdf.fonts import FontFace

    title = _pdf_text(str(report.get("title") or "Docket report"))

    class ReportPDF(FPDF):
        def footer(self) -> None:
            self.set_y(-12)
            self.set_font("DejaVu", "", 8)
            self.set_text_color(110)
            self.cell(0, 5, f"{title} · page {self.page_no()}/{{nb}}", align="C")
            self.set_text_color(0)

    pdf = ReportPDF(orientation="portrait", unit="mm", format="A4")
    pdf.set_margins(15, 15, 15)
    pdf.set_auto_page_break(True, margin=18)
    pdf.set_title(title)
    pdf.set_author("Docket")
    pdf.set_creator("Docket")
    pdf.set_lang("en")
    generated = _parse_time(report.get("generated_at"))
    if generated:
        pdf.set_creation_date(generated)
    fallbacks = []
    for family, style, path in _font_files():
        pdf.add_font(family, style, str(path))
        if family != "DejaVu":
            fallbacks.append(family)
    if fallbacks:
        pdf.set_fallback_fonts(fallbacks, exact_match=False)
    if _needs_shaping(title, blocks):
        pdf.set_text_shaping(True)
    pdf.add_page()

    pdf.set_font("DejaVu", "B", 17)
    pdf.multi_cell(0, 8, title, new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("DejaVu", "", 10)
    pdf.set_text_color(80)
    for line in _subtitle(report):
        pdf.multi_cell(0, 5.5, _pdf_text(line), new_x="LMARGIN", new_y="NEXT")
    pdf.set_text_color(0)

    for block in blocks:
        pdf.ln(4)
        if isinstance(block, _Chart):
            height = pdf.epw * CHART_SIZE_INCHES[1] / CHART_SIZE_INCHES[0]
            _pdf_heading(pdf, block.title, keep_with=height)
            pdf.image(io.BytesIO(block.png), w=pdf.epw, alt_text=block.alt)
            continue
        _pdf_heading(pdf, block.title)
        if not block.rows:
            pdf.set_font("DejaVu", "I", 9)
            pdf.multi_cell(0, 5, _pdf_text(block.empty), new_x="LMARGIN", new_y="NEXT")
            continue
        pdf.set_font("DejaVu", "", 9)
        columns = len(block.headers or block.rows[0])
        align = tuple("RIGHT" if i in block.numeric else "LEFT" for i in range(columns))
        with pdf.table(
            col_widths=block.widths,
            text_align=align,
            first_row_as_headings=block.headers is not None,
            headings_style=FontFace(emphasis="BOLD", fill_color=(238, 238, 238)),
            borders_layout="HORIZONTAL_LINES",
            line_height=4.6,
            padding=(1.2, 1.5),
            v_align="TOP",
        ) as table:
            for cells in ([block.headers] if block.headers else []) + block.rows:
                row = table.row()
                for index, cell in enumerate(cells):
                    bold = block.headers is None and index == 0
                    row.cell(_pdf_text(cell), style=FontFace(emphasis="BOLD") if bold else None)
    return bytes(pdf.output())


def _pdf_heading(pdf: Any, text: str, keep_with: float = 15) -> None:
    """A section heading (and outline entry), on a new page when ``keep_with`` mm of what
    follows would not fit below it."""
    if pdf.get_y() + 8 + keep_with > pdf.page_break_trigger:
        pdf.add_page()
    pdf.start_section(text)
    pdf.set_font("DejaVu", "B", 12)
    pdf.multi_cell(0, 7, _pdf_text(text), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(1)
