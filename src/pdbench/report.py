"""Stage: a self-contained HTML page per experiment (rule ``report``; no scripts, no CDN)."""

from __future__ import annotations

import datetime as dt
import html
import os
import statistics
from collections.abc import Sequence

from .layout import write_text

METHOD = """
<p>Decode throughput per GPU = <b>global batch</b> / <b>step time</b> / <b>decode GPUs</b>.</p>
<ul>
<li><b>Global batch</b>: the sum over every decode DP rank of its batch at the profiled
steps: the <code>bs</code> of <code>step[DECODE bs=N]</code> spans in the rank's trace when
the SGLang release writes them, else the <code>#running-req</code> of the rank's last
<code>Decode batch</code> log line before its <code>Profiling starts</code> line.</li>
<li><b>Step time</b>: the median period between consecutive decode steps in the TP-0 trace
(p10/p90 give the spread); older releases without step spans fall back to the scheduler's
<code>run_batch</code> frames, then to <code>cudaGraphLaunch</code> events.</li>
<li><b>Log step time</b>: the step time the decode logs imply just before and after the
profile window (<code>#running-req</code> / per-step <code>gen throughput</code>). The profiler
slows traced steps; a ratio far from 1 is flagged.</li>
<li>The batch is filled with <code>/slow_down</code> while the benchmark client runs, then
released; <code>fill_ended_by</code> says whether the target was reached, the batch
plateaued, or the fill timed out.</li>
</ul>
"""


EMULATED_LABEL = "emulated \u2014 not a measurement"


def _is_true(value) -> bool:
    return str(value).strip().lower() in ("true", "1", "yes")


def point_summary(rows: Sequence[dict]) -> list[dict]:
    """Per point: the median tokens/s per decode GPU over its snapshots, their min and max,
    how many there are, and the median batch and step time behind the median. Every
    snapshot counts; none is picked as the best."""
    by_point: dict[str, list[dict]] = {}
    for r in rows:
        by_point.setdefault(str(r["point"]), []).append(r)
    summary = []
    for point, snaps in sorted(by_point.items()):
        tps = [float(r["tokens_per_s_per_gpu"]) for r in snaps]
        summary.append({
            "point": point,
            "snapshots": len(snaps),
            "tokens_per_s_per_gpu_median": statistics.median(tps),
            "tokens_per_s_per_gpu_min": min(tps),
            "tokens_per_s_per_gpu_max": max(tps),
            "global_batch_median": statistics.median(float(r["global_batch"]) for r in snaps),
            "step_ms_median": statistics.median(float(r["step_ms"]) for r in snaps),
            "decode_gpus": snaps[0]["decode_gpus"],
            "fill_ended_by": ", ".join(sorted({str(r["fill_ended_by"]) for r in snaps})),
            "emulated": any(_is_true(r.get("emulated")) for r in snaps),
        })
    return summary


def render(experiment: str, rows: Sequence[dict], *, config_path: str | None = None) -> str:
    columns = list(rows[0]) if rows else []
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(r.get(c, '')))}</td>" for c in columns) + "</tr>"
        for r in rows
    )
    points = point_summary(rows)
    emulated = any(p["emulated"] for p in points)
    label = f" ({EMULATED_LABEL})" if emulated else ""
    e = html.escape
    summary = "".join(
        f"<tr><td>{e(p['point'])}</td><td>{p['tokens_per_s_per_gpu_median']:,.0f}</td>"
        f"<td>{p['tokens_per_s_per_gpu_min']:,.0f} \u2013 {p['tokens_per_s_per_gpu_max']:,.0f}"
        f"</td><td>{p['snapshots']}</td>"
        f"<td>{p['global_batch_median']:g} / {p['step_ms_median']:g} ms / "
        f"{e(str(p['decode_gpus']))} GPUs</td><td>{e(p['fill_ended_by'])}</td></tr>"
        for p in points
    )
    generated = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    banner = (f'<p class="emulated"><b>{e(EMULATED_LABEL.capitalize())}</b>: the servers were '
              "the SGLang emulator, a test double; these numbers rehearse the workflow and "
              "measure nothing.</p>") if emulated else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>pdbench {e(experiment)}{e(label)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; font-size: 0.85em; }}
td, th {{ border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: right; }}
th {{ background: #f0f0f0; }}
.emulated {{ color: #a40; }}
</style></head><body>
<h1>Decode throughput: {e(experiment)}{e(label)}</h1>
{banner}
<h2>Per point (median over its snapshots)</h2>
<table><tr><th>point</th><th>tokens/s per decode GPU (median)</th><th>min \u2013 max</th>
<th>snapshots</th><th>median global batch / step / GPUs</th><th>fill ended by</th></tr>
{summary}</table>
<h2>Every snapshot</h2>
<table><tr>{head}</tr>
{body}</table>
<h2>Method</h2>
{METHOD}
<p>Generated {generated}{" from " + e(config_path) if config_path else ""}.</p>
</body></html>
"""


def write(
    path: str | os.PathLike, experiment: str, rows: Sequence[dict], config_path: str | None = None
) -> None:
    write_text(path, render(experiment, rows, config_path=config_path))
