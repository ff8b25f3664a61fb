"""Stage: throughput rows per snapshot of a point, the validity gate, and the experiment
table (rules ``point_throughput`` and ``experiment_throughput``); the number itself is
:func:`pdbench.measure.measure`."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

from .context import PointContext
from .errors import InputError, PdbenchError
from . import layout
from .layout import read_json, read_json_if
from .benchresult import last_line, summarize
from .measure import measure

COLUMNS = [
    "point",
    "ep",
    "prefill_groups",
    "eplb",
    "snapshot",
    "profile_id",
    "global_batch",
    "target_global_batch",
    "rank_batch_min",
    "rank_batch_max",
    "ranks",
    "step_ms",
    "step_ms_p10",
    "step_ms_p90",
    "steps_used",
    "log_step_ms",
    "trace_log_ratio",
    "decode_gpus",
    "tokens_per_s_per_gpu",
    "client_output_throughput",
    "client_completed",
    "fill_ended_by",
    "method",
    "flags",
    "valid",
    "invalid_reason",
    "emulated",
]

# The fill curve keeps at most this many samples per rank (the report draws it).
FILL_CURVE_SAMPLES = 200
# Time zones are whole quarter hours: a log clock in another zone than UTC shows up as
# such an offset between the logs' first slow_down line and the fill's recorded start.
_ZONE_STEP_S = 900.0


def emulated(cfg) -> bool:
    """Whether the servers of this config are the SGLang emulator (a test double)."""
    return cfg["sglang"]["server_module"] == "pdbench.emulator"


class GateError(PdbenchError):
    """A measurement failed the validity gate; the message says which and why."""


def point_rows(ctx: PointContext) -> list[dict]:
    return point_measurement(ctx)[0]


def point_measurement(ctx: PointContext) -> tuple[list[dict], dict]:
    """The point's rows (one per snapshot, each with its validity verdict) and what they
    came from (``measurement.json``: per-rank batches, step periods, the fill curve)."""
    cfg, point, paths = ctx.cfg, ctx.point, ctx.paths
    line = last_line(paths.bench)
    bench = summarize(line, cfg["workload"]["client"], source=paths.bench) if line else {}
    filled = read_json_if(paths.filled, {})
    logs = ctx.decode_logs()
    if not logs:
        raise InputError(f"no decode logs in {paths.logs}")
    rows, snapshots = [], []
    minimum = cfg["fill"]["min_batch_fraction"] * point.target_global_batch
    refused = refused_requests(ctx, filled)
    for k in range(1, cfg["profile"]["snapshots"] + 1):
        snap = read_json(paths.snapshot(k))
        m = measure(
            logs,
            snap["output_dir"] if Path(snap["output_dir"]).is_dir() else paths.snapshot_traces(k),
            decode_gpus=point.decode_gpus,
            profile_id=snap["profile_id"],
            dp_size=point.decode_dp,
            tolerance=cfg["profile"]["log_step_tolerance"],
        )
        spread = m.get("step_ms_spread") or {}
        if snap.get("eplb_rebalance_overlap"):  # online EPLB moved experts mid-profile
            m["flags"] = [*m["flags"], "eplb_rebalance_in_window"]
        if refused["count"]:
            m["flags"] = [*m["flags"], f"requests_refused_{refused['count']}"]
        invalid = "" if m["global_batch"] >= minimum else (
            f"global batch {m['global_batch']} below fill.min_batch_fraction "
            f"({cfg['fill']['min_batch_fraction']}) x target {point.target_global_batch}")
        snapshots.append({
            "snapshot": k,
            "profile_id": m["profile_id"],
            "per_rank_batch": m["per_rank_batch"],
            "rank_step_ms": m["rank_step_ms"],
            "step_periods_ms": m["step_periods_ms"],
            "log_step_ms": m["log_step_ms"],
            "trace_file": m["trace_file"],
            "formula": m["formula"],
            "valid": not invalid,
            "invalid_reason": invalid,
        })
        rows.append({
            "point": point.name,
            "ep": point.ep,
            "prefill_groups": point.prefill_groups,
            "eplb": point.eplb,
            "snapshot": k,
            "profile_id": m["profile_id"],
            "global_batch": m["global_batch"],
            "target_global_batch": point.target_global_batch,
            "rank_batch_min": m["rank_batch_min"],
            "rank_batch_max": m["rank_batch_max"],
            "ranks": m["ranks"],
            "step_ms": round(m["step_ms"], 4),
            "step_ms_p10": _round(spread.get("p10_ms")),
            "step_ms_p90": _round(spread.get("p90_ms")),
            "steps_used": m["steps_used"],
            "log_step_ms": _round(m["log_step_ms"]),
            "trace_log_ratio": _round(m["trace_log_ratio"]),
            "decode_gpus": m["decode_gpus"],
            "tokens_per_s_per_gpu": round(m["tokens_per_s_per_gpu"], 2),
            "client_output_throughput": _round(bench.get("output_throughput")),
            "client_completed": bench.get("completed"),
            "fill_ended_by": filled.get("ended_by"),
            "method": m["method"],
            "flags": ";".join(m["flags"]),
            "valid": not invalid,
            "invalid_reason": invalid,
            # The servers were the SGLang emulator (a rehearsal): the numbers measure nothing.
            "emulated": emulated(cfg),
        })
    details = {
        "point": point.name,
        "experiment": point.experiment,
        "target_per_rank": point.target_global_batch / max(1, point.decode_dp),
        "snapshots": snapshots,
        "fill_curve": fill_curve(logs, filled, read_json_if(paths.released, {})),
        "requests_refused": refused,
        "emulated": emulated(cfg),
    }
    return rows, details


def refused_requests(ctx: PointContext, filled: dict) -> dict:
    """Requests the servers refused from this point's fill on (pdbench.loglines
    ``request_refused``: past the context length, …). A streamed refusal is a 200 with an
    error event that bench_serving counts as a success, so the client's result does not
    show them; the servers' logs do (SGLang 0.5.17 on an H100 refused 10 of 128 whose
    prompts, sent as text, tokenized to more than the context)."""
    from .filltrack import iso_epoch
    from .loglines import iter_log

    start = iso_epoch(filled.get("started_at"))
    servers = {"decode": ctx.decode_logs(),
               **{s.name: ctx.servers_paths.server_logs(s.name) for s in ctx.plan.prefill}}
    by_server, first = {}, None
    for server, logs in servers.items():
        for log in logs:
            for rec in iter_log(log):
                if rec["kind"] != "request_refused":
                    continue
                if start is not None and rec.get("epoch") is not None \
                        and rec["epoch"] < start - 1:
                    continue  # an earlier point's, on shared servers
                by_server[server] = by_server.get(server, 0) + 1
                first = first or f"{log}:{rec['line']}: {rec['message'][:200]}"
    # A PD request reaches decode and one prefill group; each server logs its refusal.
    return {"count": max(by_server.values(), default=0), "by_server": by_server,
            "first": first}


def fill_curve(logs: Sequence[Path], filled: dict, released: dict) -> dict:
    """``#running-req`` per DP rank from the decode logs, seconds since the fill started,
    from the fill's start to a while after the release. The logs' clock is aligned to
    the stage records by the whole quarter hours between the first slow_down line and
    the recorded fill start (a node clock in another time zone)."""
    from .filltrack import iso_epoch
    from .measure import read_rank_logs

    start = iso_epoch(filled.get("started_at"))
    if start is None:
        return {"ranks": {}, "release_s": None, "why": "the fill recorded no start"}
    by_rank = read_rank_logs(logs)
    first_sleep = min((r["epoch"] for recs in by_rank.values() for r in recs
                       if r["kind"] == "slow_down" and r.get("epoch")), default=None)
    shift = 0.0 if first_sleep is None else round(
        (first_sleep - start) / _ZONE_STEP_S) * _ZONE_STEP_S
    release = iso_epoch(released.get("released_at")) or iso_epoch(
        filled.get("release_requested_at"))
    release_s = None if release is None else round(release - start, 3)
    end_s = (release_s or float(filled.get("fill_s") or 0.0)) * 1.2 + 5.0
    ranks = {}
    for rank, records in sorted(by_rank.items()):
        samples = [[round(r["epoch"] - shift - start, 3), r["running_req"]]
                   for r in records if r["kind"] == "decode" and r.get("epoch")
                   and r.get("running_req") is not None
                   and -1.0 <= r["epoch"] - shift - start <= end_s]
        # Log times are whole seconds: keep one sample per change, then thin evenly.
        samples = [s for i, s in enumerate(samples) if i == 0 or s != samples[i - 1]]
        step = max(1, -(-len(samples) // FILL_CURVE_SAMPLES))
        ranks[str(rank)] = samples[::step]
    return {"ranks": ranks, "release_s": release_s, "clock_shift_s": shift}


def gate(ctx: PointContext, rows: Sequence[dict]) -> None:
    """Fail the point when none of its snapshots profiled a batch near the target (a
    snapshot below it stays in the table, marked invalid with its reason)."""
    minimum = ctx.cfg["fill"]["min_batch_fraction"] * ctx.point.target_global_batch
    low = [r for r in rows if r["global_batch"] < minimum]
    if rows and len(low) == len(rows):
        worst = min(low, key=lambda r: r["global_batch"])
        short = (read_json_if(ctx.paths.filled, {}) or {}).get("short_ranks") or []
        why = f" ({short[0]}" + (f"; {len(short) - 1} more in fill/filled.json)"
                                 if len(short) > 1 else ")") if short else ""
        raise GateError(
            f"{ctx.point.experiment}/{ctx.point.name}: snapshot {worst['snapshot']} profiled a "
            f"global batch of {worst['global_batch']}, below fill.min_batch_fraction "
            f"({ctx.cfg['fill']['min_batch_fraction']}) x target "
            f"{ctx.point.target_global_batch}; the fill ended by {worst['fill_ended_by']}"
            + why
        )


def write_csv(path: str | os.PathLike, rows: Sequence[dict]) -> None:
    layout.write_csv(path, COLUMNS, rows)


def merge_csvs(paths: Sequence[str | os.PathLike]) -> list[dict]:
    rows = []
    for path in paths:
        try:
            with open(path, newline="") as fh:
                reader = csv.DictReader(fh)
                if reader.fieldnames != COLUMNS:
                    raise InputError(f"{path}: columns {reader.fieldnames} are not pdbench's")
                rows.extend(reader)
        except OSError as exc:
            raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    return rows


def _round(value, digits: int = 4):
    return None if value is None else round(float(value), digits)
