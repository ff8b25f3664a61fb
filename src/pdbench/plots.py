"""Plots for the experiment report, as SVG text to inline into one self-contained HTML page.

The report must open offline and be small enough to email, so every plot is vector SVG with
its text kept as text (no embedded fonts, no raster images) and without the XML prolog that
inline SVG must not carry. Several SVGs share one HTML document, so their ids must not
collide: each render gets its own hash salt, and ids that nothing references are dropped.

Figures are built on :class:`matplotlib.figure.Figure` directly, never through pyplot, so no
global figure registry or backend is touched; every rc setting lives in an ``rc_context``.

The plot functions take plain data (what the report stage reads from CSV/JSON) and skip what
is unusable (None, NaN, inf, negative) instead of raising: bad data from one snapshot must not
cost the whole report. An empty input gives a small SVG that says "no data: <why>".
"""

from __future__ import annotations

import html
import io
import math
import re
import sys
import textwrap
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import matplotlib as mpl
import numpy as np
from matplotlib.artist import Artist
from matplotlib.cm import ScalarMappable
from matplotlib.colors import BoundaryNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter
from matplotlib.transforms import blended_transform_factory

__all__ = [
    "EMULATED_LABEL",
    "fill_curves",
    "gpu_hours_by_stage",
    "rank_batches",
    "step_time_distribution",
    "throughput_vs_prefill",
    "to_svg",
]

# The same words as report.EMULATED_LABEL (not imported: the report stage imports this module).
EMULATED_LABEL = "emulated \u2014 not a measurement"
EMULATED_COLOUR = "#b3261e"

WIDTH_IN = 7.0
HEIGHT_IN = 3.2
# Caps on the points drawn per fill line and per fill figure: with --decode-log-interval 1 a
# rank's fill curve can hold thousands of samples, and every point costs ~15 bytes of SVG.
# Decimation keeps the min and max of each time bin, so the envelope survives.
MAX_LINE_POINTS = 300
MIN_LINE_POINTS = 30
MAX_FILL_POINTS = 8000
# The step-time axis spans at least this fraction of the median either side.
MIN_STEP_SPAN = 0.05
# Above this ratio of the largest plotted throughput to the smallest series median, the
# throughput axis is logarithmic: a 132 tok/s rehearsal under a 13,386 tok/s reference
# would otherwise lie flat on the x axis.
LOG_RATIO = 20.0

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")

# Applied while a figure is built *and* while it is rendered: tick labels are created at
# draw time and read the rc then.
_RC: dict[str, Any] = {
    "font.family": "sans-serif",
    # Layout is measured with DejaVu Sans (matplotlib's own font); browsers without it fall
    # back to narrower fonts, so text never grows into its neighbours. A short list also
    # keeps the font-family written on every <text> short.
    "font.sans-serif": ["DejaVu Sans", "Arial", "Helvetica"],
    "font.size": 9.0,
    "axes.titlesize": 9.5,
    "axes.labelsize": 9.0,
    "figure.titlesize": 10.0,
    "xtick.labelsize": 8.5,
    "ytick.labelsize": 8.5,
    "legend.fontsize": 8.0,
    "legend.title_fontsize": 8.0,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#dddddd",
    "grid.linewidth": 0.6,
    "axes.axisbelow": True,
    # Labels come from config and data: a "$" must print as "$", not start mathtext.
    "text.parse_math": False,
}

_SVG_PROLOG_END = re.compile(r"^.*?(?=<svg[\s>])", re.S)
# Attributes only, never text content: inside a tag the next angle bracket is its ">".
_ID_ATTR = re.compile(r'\sid="([^"]*)"(?=[^<>]*>)')
_REFERENCE = re.compile(r"#([A-Za-z_][\w.:-]*)")
_GEOMETRY_ATTR = re.compile(r'\s(?:d|x|y|width|height|transform)="[^"]*"(?=[^<>]*>)')
_LONG_FLOAT = re.compile(r"-?\d+\.\d{3,}")


def _round_floats(m: re.Match[str]) -> str:
    """Coordinates to 0.01 pt (matplotlib writes 6 decimals): a third off the path bytes."""
    return _LONG_FLOAT.sub(lambda f: f"{float(f.group()):.2f}".rstrip("0").rstrip("."),
                           m.group(0))


@contextmanager
def _style() -> Iterator[None]:
    with mpl.rc_context(_RC):
        yield


def _check_name(name: str) -> None:
    if not _NAME.fullmatch(name):
        raise ValueError(f"plot name {name!r} must match {_NAME.pattern} (it becomes an id)")


def _num(value: object) -> float | None:
    """A finite, non-negative float, else None: bad data is skipped, never drawn."""
    if value is None or isinstance(value, bool):
        return None
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) and x >= 0 else None


def _rank(key: object) -> int | None:
    try:
        r = int(str(key).strip())
    except ValueError:
        return None
    return r if r >= 0 else None


def _figure(width: float = WIDTH_IN, height: float = HEIGHT_IN) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    fig.get_layout_engine().set(h_pad=0.04, w_pad=0.04)
    return fig


def _decorate(fig: Figure, title: str, emulated: bool) -> str:
    """Title the figure and, when emulated, mark it in red; returns the aria-label."""
    fig.suptitle(title, x=0.01, ha="left", fontweight="bold")
    if emulated:
        fig.text(
            0.995, 0.995, EMULATED_LABEL, ha="right", va="top", color=EMULATED_COLOUR,
            fontweight="bold", fontsize=9.5,
        )
        return f"{title} ({EMULATED_LABEL})"
    return title


def to_svg(fig: Figure, name: str, *, label: str | None = None) -> str:
    """Render ``fig`` as an ``<svg>`` element to paste into HTML, and release the figure.

    The root gets ``id="plot-{name}"``, ``class="plot"``, ``role="img"`` and ``aria-label``
    (``label``, else the name). ``name`` must be unique within the page: it salts the hashed
    clip-path/marker ids, and ids that nothing in the SVG references are removed, so two
    plots of one page never share an id. The output is deterministic for the same input.
    """
    _check_name(name)
    root_id = f"plot-{name}"
    rc = {
        **_RC,
        "svg.fonttype": "none",
        "svg.hashsalt": f"pdbench-{root_id}",
        "svg.id": root_id,
        # Images are inlined if a caller draws one (never a side file); these plots draw none.
        "svg.image_inline": True,
    }
    buf = io.StringIO()
    try:
        with mpl.rc_context(rc):
            # No metadata block: it would carry a date (non-deterministic) and bytes for nothing.
            fig.savefig(
                buf, format="svg",
                metadata={"Date": None, "Creator": None, "Format": None, "Type": None},
            )
    finally:
        pyplot = sys.modules.get("matplotlib.pyplot")
        if pyplot is not None:  # a pyplot-managed figure would otherwise stay registered
            pyplot.close(fig)
        fig.clear()
    svg = _SVG_PROLOG_END.sub("", buf.getvalue(), count=1)
    referenced = set(_REFERENCE.findall(svg))

    def keep_referenced(m: re.Match[str]) -> str:
        return m.group(0) if m.group(1) in referenced or m.group(1) == root_id else ""

    svg = _ID_ATTR.sub(keep_referenced, svg)
    # Matplotlib's default style rule is "*{...}"; inline, that selector would reach the page.
    svg = svg.replace('<style type="text/css">*{', f'<style type="text/css">#{root_id} *{{', 1)
    svg = _GEOMETRY_ATTR.sub(_round_floats, svg)
    svg = re.sub(r"\n[ \t]+", "\n", svg)  # indentation only; no text content spans lines
    aria = html.escape(label if label is not None else name, quote=True)
    svg = svg.replace("<svg ", f'<svg class="plot" role="img" aria-label="{aria}" ', 1)
    return svg.strip() + "\n"


def _no_data(name: str, title: str, why: str, emulated: bool) -> str:
    with _style():
        fig = _figure(WIDTH_IN, 1.3)
        label = _decorate(fig, title, emulated)
        fig.text(0.5, 0.4, f"no data: {why}", ha="center", va="center", color="#555555",
                 fontsize=10)
        return to_svg(fig, name, label=f"{label}: no data: {why}")


# -- 1. throughput against prefill groups -------------------------------------------------


def throughput_vs_prefill(
    series: Sequence[Mapping[str, Any]],
    references: Sequence[Mapping[str, Any]],
    *,
    emulated: bool,
    name: str = "throughput",
) -> str:
    """Decode tokens/s per GPU against prefill-group count: median with min-max per point,
    one line per series, published references as dashed horizontal lines."""
    title = "Decode throughput per GPU vs prefill groups"
    lines: list[tuple[str, list[tuple[int, float, float, float]]]] = []
    for s in series or ():
        pts = []
        for p in s.get("points") or ():
            groups, median = _num(p.get("prefill_groups")), _num(p.get("median"))
            if groups is None or median is None or groups != int(groups):
                continue
            lo, hi = _num(p.get("min")), _num(p.get("max"))
            lo = median if lo is None or lo > median else lo
            hi = median if hi is None or hi < median else hi
            pts.append((int(groups), median, lo, hi))
        if pts:
            lines.append((str(s.get("label", "")), sorted(pts)))
    if not lines:
        return _no_data(name, title, "no point with a finite median throughput", emulated)
    refs = []
    for r in references or ():
        value = _num(r.get("tokens_per_s_per_gpu"))
        if value is not None and value > 0:
            text = str(r.get("label", ""))
            if r.get("conditions"):
                text += f" ({r['conditions']})"
            refs.append((value, text))

    medians = [m for _, pts in lines for _, m, _, _ in pts if m > 0]
    top = max([hi for _, pts in lines for *_, hi in pts] + [v for v, _ in refs])
    log = bool(medians) and top > LOG_RATIO * min(medians)

    with _style():
        fig = _figure(WIDTH_IN, HEIGHT_IN + 0.3)  # the legend sits below the axes
        ax = fig.add_subplot()
        xs = sorted({g for _, pts in lines for g, *_ in pts})
        # Dodge the series sideways so min-max bars of equal x stay apart.
        step = min(0.08, 0.4 / max(len(lines), 1))
        for i, (text, pts) in enumerate(lines):
            dx = (i - (len(lines) - 1) / 2) * step
            x = [g + dx for g, *_ in pts]
            y = [m for _, m, _, _ in pts]
            yerr = [[m - lo for _, m, lo, _ in pts], [hi - m for _, m, _, hi in pts]]
            ax.errorbar(x, y, yerr=yerr, fmt="-o", ms=4, lw=1.4, capsize=3, elinewidth=1,
                        label=text)
        for value, _ in refs:
            ax.axhline(value, ls="--", lw=1, color="#555555", zorder=1)
        if log:
            low = min([v for _, pts in lines for _, m, lo, _ in pts for v in (m, lo) if v > 0]
                      + [v for v, _ in refs])
            ax.set_yscale("log")
            ax.set_ylim(low / 1.5, top * 1.6)
            decades = math.log10(top * 1.6) - math.log10(low / 1.5)
            ax.yaxis.set_major_locator(
                LogLocator(subs=(1.0, 2.0, 5.0) if decades <= 3.5 else (1.0,)))
            # Plain numbers: the default 10^x labels are mathtext, printed raw here.
            ax.yaxis.set_major_formatter(FuncFormatter(_plain_number))
            ax.yaxis.set_minor_formatter(NullFormatter())
            # Two lines: on one, the label is taller than the axes and runs into the title.
            ax.set_ylabel("decode tokens/s per GPU\n(log scale)")
        else:
            ax.set_ylim(0, top * 1.15 if top > 0 else 1)
            ax.set_ylabel("decode tokens/s per GPU")
        ax.set_xlim(xs[0] - 0.5, xs[-1] + 0.5)
        ax.set_xticks(range(xs[0], xs[-1] + 1))
        ax.grid(axis="x", visible=False)
        ax.set_xlabel("prefill groups")
        # Below the axes, never over the data.
        fig.legend(loc="outside lower center", ncols=min(len(lines), 3), frameon=False,
                   title="median over snapshots, bar: min\u2013max")
        label = _decorate(fig, title, emulated)
        _reference_labels(fig, ax, refs)
        return to_svg(fig, name, label=label)


def expert_load_per_rank(
    series: Sequence[Mapping[str, Any]], *, emulated: bool, name: str = "expert-load"
) -> str:
    """Routed tokens per EP rank (summed over layers), one bar group per series (e.g. the
    recorded distribution as recorded and with a balanced placement), as a share of the
    mean rank's load, so 1.0 is perfectly even."""
    title = "Expert load per EP rank (recorded distribution)"
    bars = []
    for s in series or ():
        loads = [v for v in (_num(x) for x in s.get("gpu_load") or ()) if v is not None]
        mean = sum(loads) / len(loads) if loads else 0
        if mean > 0:
            bars.append((str(s.get("label", "")), [v / mean for v in loads]))
    if not bars:
        return _no_data(name, title, "no recorded expert distribution", emulated)
    with _style():
        fig = _figure(WIDTH_IN, HEIGHT_IN + 0.3)
        ax = fig.add_subplot()
        width = 0.8 / len(bars)
        for i, (text, loads) in enumerate(bars):
            x = np.arange(len(loads)) + (i - (len(bars) - 1) / 2) * width
            ax.bar(x, loads, width=width, label=text)
        ax.axhline(1.0, ls="--", lw=1, color="#555555", zorder=1)
        ax.set_xlabel("EP rank (GPU)")
        ax.set_ylabel("routed tokens / mean rank")
        ax.grid(axis="x", visible=False)
        fig.legend(loc="outside lower center", ncols=min(len(bars), 2), frameon=False)
        label = _decorate(fig, title, emulated)
        return to_svg(fig, name, label=label)


def _plain_number(value: float, _pos: object = None) -> str:
    return f"{value:,.0f}" if value >= 1 else f"{value:g}"


def _reference_labels(fig: Figure, ax: Any, refs: Sequence[tuple[float, str]]) -> None:
    """Write each reference's label just above its dashed line, at the left of the axes.

    Labels wider than the axes are wrapped, and labels of close lines (on a log axis a few
    points apart) are pushed apart vertically so none overlaps another; all stay within the
    axes height, so inside the figure.
    """
    if not refs:
        return
    fig.draw_without_rendering()  # lay out first: the axes size decides wrapping and spacing
    box = ax.get_window_extent()
    width, height = box.width, box.height
    texts = []
    for value, text in sorted(refs):
        t = ax.text(0.01, 0.0, text, transform=ax.transAxes, ha="left", va="bottom",
                    fontsize=7.5, color="#333333", linespacing=1.1,
                    bbox={"facecolor": "white", "alpha": 0.75, "edgecolor": "none",
                          "pad": 0.6})
        w = t.get_window_extent().width
        if w > 0.92 * width:  # the conditions on a line of their own, then plain wrapping
            parts = text.split(" (", 1)
            t.set_text("\n(".join(parts))
            w = max(t.get_window_extent().width, 1.0)
            if w > 0.92 * width:
                chars = max(20, int(max(len(part) for part in parts) * 0.92 * width / w))
                t.set_text("\n".join(textwrap.fill(part, chars) for part in
                                     [parts[0], *(f"({c}" for c in parts[1:])]))
        h = t.get_window_extent().height / height + 0.005  # in axes fractions
        y = ax.transLimits.transform(ax.transScale.transform((0.0, value)))[1]
        texts.append([t, y + 0.01, h])
    for prev, cur in zip(texts, texts[1:]):  # upwards: never below the label under it
        cur[1] = max(cur[1], prev[1] + prev[2])
    ceiling = 1.0
    for entry in reversed(texts):  # downwards: never above the axes or the label over it
        entry[1] = min(entry[1], ceiling - entry[2])
        ceiling = entry[1]
    for t, y, _ in texts:
        t.set_y(max(y, 0.0))


# -- 2. batch per DP rank ------------------------------------------------------------------


def _batch_levels(low: float, high: float, target: float | None) -> np.ndarray:
    """Colour band edges for batches in [low, high]: one band per integer when the spread is
    small (a rank one request short must differ in colour), else about ten bands with the
    target alone in its own band. Few bands keep the colourbar a few vector rectangles."""
    lo, hi = math.floor(low), math.ceil(high)
    if hi - lo <= 12:
        return np.arange(lo, hi + 2) - 0.5
    step = math.ceil((hi - lo) / 10)
    if target is not None and lo < target <= hi and target == int(target):
        t = int(target)
        edges = np.concatenate([np.arange(t, lo - step, -step)[::-1],
                                np.arange(t + 1, hi + step + 1, step)]).astype(float)
    else:
        edges = np.arange(lo, hi + step + 1, step, dtype=float)
    edges[0] = max(edges[0], 0.0)  # the colourbar shows no negative batch
    return edges


def _tick_step(n: int) -> int:
    step = 1
    while n / step > 16:
        step *= 2
    return step


def rank_batches(
    snapshots: Sequence[Mapping[str, Any]], *, emulated: bool, name: str = "rank-batches"
) -> str:
    """Heatmap of the batch of every decode DP rank at each profile (rows: snapshots), ranks
    below the target marked, so an imbalanced or unfilled batch shows at a glance."""
    title = "Decode batch per DP rank at each profile"
    rows: list[tuple[str, dict[int, float], float | None]] = []
    for snap in snapshots or ():
        batch: dict[int, float] = {}
        for key, value in (snap.get("per_rank_batch") or {}).items():
            rank, b = _rank(key), _num(value)
            if rank is not None and b is not None:
                batch[rank] = b
        if batch:
            rows.append((str(snap.get("label", "")), batch, _num(snap.get("target_per_rank"))))
    if not rows:
        return _no_data(name, title, "no snapshot with a per-rank batch", emulated)

    n_ranks = max(r for _, batch, _ in rows for r in batch) + 1
    grid = np.full((len(rows), n_ranks), np.nan)
    below_x: list[int] = []
    below_y: list[int] = []
    for i, (_, batch, target) in enumerate(rows):
        for rank, b in batch.items():
            grid[i, rank] = b
            if target is not None and b < target:
                below_x.append(rank)
                below_y.append(i)
    values = grid[np.isfinite(grid)]
    targets = {t for _, _, t in rows if t is not None}
    levels = _batch_levels(float(values.min()), float(values.max()),
                           next(iter(targets)) if len(targets) == 1 else None)
    norm = BoundaryNorm(levels, 256, clip=True)
    cmap = mpl.colormaps["viridis"]

    with _style():
        fig = _figure(WIDTH_IN, max(HEIGHT_IN, 1.5 + 0.26 * len(rows)))
        ax = fig.add_subplot()
        ax.set_facecolor("#d9d9d9")  # shows through where a rank is missing
        ax.grid(False)
        # One rectangle per run of equal colour, not one per cell: most ranks sit at the
        # target, so a row is usually a few rectangles (an SVG path costs ~150 bytes).
        for i in range(len(rows)):
            runs: list[tuple[float, float]] = []
            colours: list[tuple[float, float, float, float]] = []
            level = None
            for rank in range(n_ranks):
                b = grid[i, rank]
                here = None if np.isnan(b) else int(norm(b))
                if here is not None and here == level:  # level is None after a gap
                    runs[-1] = (runs[-1][0], runs[-1][1] + 1)
                elif here is not None:
                    runs.append((rank - 0.5, 1.0))
                    colours.append(cmap(here))
                level = here
            ax.broken_barh(runs, (i - 0.5, 1.0), facecolors=colours, edgecolors=colours,
                           linewidth=0.3)
        if below_x:
            ax.scatter(below_x, below_y, marker="v", s=9, c="white", edgecolors="black",
                       linewidths=0.4, zorder=3)
        ax.set_ylim(len(rows) - 0.5, -0.5)
        ax.set_xlim(-0.5, n_ranks - 0.5)
        ax.set_yticks(
            range(len(rows)),
            [f"{text} ({below_y.count(i)} below)" if below_y.count(i) else text
             for i, (text, _, _) in enumerate(rows)],
        )
        ax.set_xticks(range(0, n_ranks, _tick_step(n_ranks)))
        ax.tick_params(length=2)
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.set_xlabel("decode DP rank")
        cbar = fig.colorbar(ScalarMappable(norm, cmap), ax=ax, pad=0.01, fraction=0.04,
                            aspect=25)
        cbar.solids.set_rasterized(False)  # a handful of bands; never an embedded image
        cbar.set_label("batch (#running-req)")
        cbar.outline.set_visible(False)
        if np.all(np.diff(levels) == 1) and levels[0] % 1 == 0.5:  # one band per integer
            ticks = MaxNLocator(nbins=8, integer=True).tick_values(levels[0], levels[-1])
            cbar.set_ticks(ticks[(ticks > levels[0]) & (ticks < levels[-1])])
        marker = "below its target"
        if len(targets) == 1:
            marker = f"below target ({next(iter(targets)):g} per rank)"
        handles: list[Artist] = [Line2D([], [], ls="none", marker="v", ms=4, mfc="white",
                                        mec="black", mew=0.4, label=marker)]
        if not np.isfinite(grid).all():
            handles.append(Patch(color="#d9d9d9", label="no value"))
        fig.legend(handles=handles, loc="outside lower center", ncols=len(handles),
                   frameon=False)
        label = _decorate(fig, title, emulated)
        return to_svg(fig, name, label=label)


# -- 3. decode step periods ----------------------------------------------------------------


def step_time_distribution(
    snapshots: Sequence[Mapping[str, Any]], *, emulated: bool, name: str = "step-times"
) -> str:
    """One box per snapshot of the decode step periods in the trace, with the step time the
    decode logs imply beside it (the profiler slows traced steps; the two should agree)."""
    title = "Decode step periods in the trace per snapshot"
    rows: list[tuple[str, list[float], float | None]] = []
    for snap in snapshots or ():
        periods = [p for p in (_num(v) for v in snap.get("periods_ms") or ()) if p is not None]
        log_step = _num(snap.get("log_step_ms"))
        if periods or log_step is not None:
            rows.append((str(snap.get("label", "")), periods, log_step))
    if not rows:
        return _no_data(name, title, "no snapshot with a finite step period", emulated)

    with _style():
        fig = _figure()
        ax = fig.add_subplot()
        boxed = [(i, p) for i, (_, p, _) in enumerate(rows) if p]
        if boxed:
            ax.boxplot(
                [p for _, p in boxed], positions=[i for i, _ in boxed], widths=0.5,
                patch_artist=True, manage_ticks=False,
                boxprops={"facecolor": "#c6dbef", "edgecolor": "#08519c", "linewidth": 0.9},
                medianprops={"color": "#08519c", "linewidth": 1.4},
                whiskerprops={"color": "#08519c", "linewidth": 0.9},
                capprops={"color": "#08519c", "linewidth": 0.9},
                flierprops={"marker": ".", "markersize": 2.5, "markeredgecolor": "#08519c",
                            "alpha": 0.6},
            )
        logs = [(i, s) for i, (_, _, s) in enumerate(rows) if s is not None]
        if logs:
            ax.scatter([i for i, _ in logs], [s for _, s in logs], marker="D", s=22,
                       color="#e6550d", edgecolors="white", linewidths=0.5, zorder=4)
        ax.set_xticks(
            range(len(rows)), [f"{text}\nn={len(p)}" for text, p, _ in rows],
            rotation=45 if len(rows) > 12 else 0, ha="right" if len(rows) > 12 else "center",
        )
        ax.set_xlim(-0.6, len(rows) - 0.4)
        ax.grid(axis="x", visible=False)
        # Equal periods (a steady trace) would autoscale to a span of microseconds, drawn as
        # an offset ("+6.08e1") and ticks like -0.0005: span at least +-5% of the median.
        values = [v for _, p, s in rows for v in (*p, *(() if s is None else (s,)))]
        mid = float(np.median(values))
        lo, hi = ax.get_ylim()
        if mid > 0:
            lo, hi = min(lo, mid * (1 - MIN_STEP_SPAN)), max(hi, mid * (1 + MIN_STEP_SPAN))
        else:
            hi = max(hi, 1.0)
        ax.set_ylim(max(lo, 0.0), hi)
        ax.ticklabel_format(axis="y", useOffset=False, style="plain")
        ax.set_ylabel("decode step (ms)")
        handles = [
            Patch(facecolor="#c6dbef", edgecolor="#08519c",
                  label="trace step periods (box: quartiles, whiskers: 1.5\u00d7IQR)"),
            Line2D([], [], ls="none", marker="D", ms=5, mfc="#e6550d", mec="white",
                   label="log-implied step time"),
        ]
        ax.legend(handles=handles, loc="best", frameon=False)
        label = _decorate(fig, title, emulated)
        return to_svg(fig, name, label=label)


# -- 4. batch fill -------------------------------------------------------------------------


def _decimate(t: np.ndarray, y: np.ndarray, max_points: int) -> tuple[np.ndarray, np.ndarray]:
    """At most ``max_points`` points: the min and max of each time bin, in time order."""
    if len(t) <= max_points:
        return t, y
    bins = max_points // 2
    edges = np.linspace(t[0], t[-1], bins + 1)
    idx = np.clip(np.searchsorted(edges, t, side="right") - 1, 0, bins - 1)
    keep: list[int] = []
    for b in np.unique(idx):
        members = np.flatnonzero(idx == b)
        lo = members[np.argmin(y[members])]
        hi = members[np.argmax(y[members])]
        keep.extend(sorted({int(lo), int(hi)}))
    keep_arr = np.array(sorted(set(keep) | {0, len(t) - 1}))
    return t[keep_arr], y[keep_arr]


def fill_curves(
    curves: Sequence[Mapping[str, Any]], *, emulated: bool, name: str = "fill-curves"
) -> str:
    """Small multiples, one per grid point, of #running-req of every decode DP rank while the
    batch fills, with the target and the moment the requests were released."""
    title = "Decode batch fill: #running-req per DP rank"
    panels: list[tuple[str, list[tuple[np.ndarray, np.ndarray]], float | None, float | None]]
    panels = []
    for curve in curves or ():
        lines = []
        for key, samples in (curve.get("ranks") or {}).items():
            if _rank(key) is None:
                continue
            pts = []
            for sample in samples or ():
                try:
                    t, y = _num(sample[0]), _num(sample[1])
                except (TypeError, IndexError, KeyError):
                    continue
                if t is not None and y is not None:
                    pts.append((t, y))
            if pts:
                arr = np.array(sorted(pts))
                lines.append((arr[:, 0], arr[:, 1]))
        target, release = _num(curve.get("target_per_rank")), _num(curve.get("release_s"))
        panels.append((str(curve.get("label", "")), lines, target, release))
    if not any(lines for _, lines, _, _ in panels):
        return _no_data(name, title, "no fill samples", emulated)

    n_lines = sum(len(lines) for _, lines, _, _ in panels)
    cap = min(MAX_LINE_POINTS, max(MIN_LINE_POINTS, MAX_FILL_POINTS // n_lines))
    panels = [(text, [_decimate(t, y, cap) for t, y in lines], target, release)
              for text, lines, target, release in panels]
    n = len(panels)
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    x_max = max([float(t[-1]) for _, lines, _, _ in panels for t, _ in lines]
                + [r for *_, r in panels if r is not None])
    y_max = max([float(y.max()) for _, lines, _, _ in panels for _, y in lines]
                + [t for _, _, t, _ in panels if t is not None])
    x_max = x_max * 1.02 if x_max > 0 else 1.0
    y_max = y_max * 1.08 if y_max > 0 else 1.0

    with _style():
        fig = _figure(WIDTH_IN if ncols == 1 else 7.5, 1.3 + 2.2 * nrows)
        axes = fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False)
        for k, ax in enumerate(axes.flat):
            if k >= n:
                ax.set_visible(False)
            elif k + ncols >= n:  # nothing drawn below it: it carries the x axis
                ax.xaxis.set_tick_params(labelbottom=True)
                ax.set_xlabel("seconds since fill start")
        for ax in axes[:, 0]:
            ax.set_ylabel("#running-req per DP rank")
        for ax, (text, lines, target, release) in zip(axes.flat, panels):
            ranks = len(lines)
            ax.set_title(f"{text} ({ranks} ranks)" if lines else text, loc="left")
            for t, y in lines:
                ax.plot(t, y, color="#1f4e9c", lw=0.7, alpha=0.35 if ranks > 8 else 0.8,
                        marker="." if len(t) == 1 else "")  # a lone sample is still seen
            if not lines:
                ax.text(0.5, 0.5, "no data: no fill samples", transform=ax.transAxes,
                        ha="center", va="center", color="#555555")
            if target is not None:
                ax.axhline(target, ls="--", lw=1, color="#222222")
            if release is not None:
                ax.axvline(release, lw=1, color="#e6550d")
                right = release > 0.8 * x_max
                ax.text(release, 0.03, " release " if right else " release",
                        transform=blended_transform_factory(ax.transData, ax.transAxes),
                        ha="right" if right else "left", va="bottom", color="#e6550d",
                        fontsize=8)
            ax.set_xlim(0, x_max)
            ax.set_ylim(0, y_max)
            ax.yaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))
        handles = [
            Line2D([], [], color="#1f4e9c", lw=0.9, label="one line per DP rank"),
            Line2D([], [], color="#222222", lw=1, ls="--", label="target per rank"),
            Line2D([], [], color="#e6550d", lw=1, label="release"),
        ]
        fig.legend(handles=handles, loc="outside lower center", ncols=3, frameon=False)
        label = _decorate(fig, title, emulated)
        return to_svg(fig, name, label=label)


# -- 5. GPU-hours per stage ----------------------------------------------------------------


def _hours(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def gpu_hours_by_stage(
    points: Sequence[Mapping[str, Any]], *, emulated: bool, name: str = "gpu-hours"
) -> str:
    """Where each point's GPU-hours went, stage by stage (stacked in the given stage order)."""
    title = "GPU-hours per point by stage"
    bars: list[tuple[str, dict[str, float]]] = []
    stages: dict[str, None] = {}  # first-seen order over all points
    for point in points or ():
        hours = {}
        for stage, value in (point.get("stages") or {}).items():
            h = _num(value)
            if h is not None:
                hours[str(stage)] = h
                stages.setdefault(str(stage))
        if hours:
            bars.append((str(point.get("label", "")), hours))
    if not bars:
        return _no_data(name, title, "no point with finite GPU-hours", emulated)

    with _style():
        fig = _figure(WIDTH_IN, max(HEIGHT_IN, 1.6 + 0.32 * len(bars)))
        ax = fig.add_subplot()
        colours = mpl.colormaps["tab10"].colors
        y = np.arange(len(bars))
        for k, stage in enumerate(stages):
            widths = [hours.get(stage, 0.0) for _, hours in bars]
            lefts = [sum(hours.get(s, 0.0) for s in list(stages)[:k]) for _, hours in bars]
            ax.barh(y, widths, left=lefts, height=0.6, color=colours[k % len(colours)],
                    label=stage)
        totals = [sum(hours.values()) for _, hours in bars]
        for i, total in enumerate(totals):
            ax.text(total, i, f" {_hours(total)} GPU-h", va="center", ha="left", fontsize=8)
        top = max(totals)
        ax.set_xlim(0, top * 1.2 if top > 0 else 1)
        ax.set_yticks(y, [text for text, _ in bars])
        ax.set_ylim(len(bars) - 0.5, -0.5)
        ax.grid(axis="y", visible=False)
        ax.set_xlabel("GPU-hours")
        fig.legend(loc="outside lower center", ncols=min(len(stages), 5), frameon=False)
        label = _decorate(fig, title, emulated)
        return to_svg(fig, name, label=label)
