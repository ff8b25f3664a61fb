"""Stage 7: a self-contained HTML page per experiment (no scripts, no CDN)."""

from __future__ import annotations

import datetime as dt
import html
import os
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


def render(experiment: str, rows: Sequence[dict], *, config_path: str | None = None) -> str:
    columns = list(rows[0]) if rows else []
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(r.get(c, '')))}</td>" for c in columns) + "</tr>"
        for r in rows
    )
    best: dict[str, dict] = {}
    for r in rows:
        current = best.get(r["point"])
        if current is None or float(r["tokens_per_s_per_gpu"]) > float(
            current["tokens_per_s_per_gpu"]
        ):
            best[r["point"]] = r
    summary = "".join(
        f"<tr><td>{html.escape(p)}</td><td>{float(r['tokens_per_s_per_gpu']):,.0f}</td>"
        f"<td>{html.escape(str(r['global_batch']))} / {html.escape(str(r['step_ms']))} ms / "
        f"{html.escape(str(r['decode_gpus']))} GPUs</td></tr>"
        for p, r in sorted(best.items())
    )
    generated = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>pdbench {html.escape(experiment)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; font-size: 0.85em; }}
td, th {{ border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: right; }}
th {{ background: #f0f0f0; }}
</style></head><body>
<h1>Decode throughput: {html.escape(experiment)}</h1>
<h2>Per point (best snapshot)</h2>
<table><tr><th>point</th><th>tokens/s per decode GPU</th><th>global batch / step / GPUs</th></tr>
{summary}</table>
<h2>Every snapshot</h2>
<table><tr>{head}</tr>
{body}</table>
<h2>Method</h2>
{METHOD}
<p>Generated {generated}{" from " + html.escape(config_path) if config_path else ""}.</p>
</body></html>
"""


def write(
    path: str | os.PathLike, experiment: str, rows: Sequence[dict], config_path: str | None = None
) -> None:
    write_text(path, render(experiment, rows, config_path=config_path))
