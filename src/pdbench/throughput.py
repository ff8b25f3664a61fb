"""Stage: throughput rows per snapshot of a point, the validity gate, and the experiment
table (rules ``point_throughput`` and ``experiment_throughput``); the number itself is
:func:`pdbench.measure.measure`."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path

from .context import PointContext
from .errors import InputError, PdbenchError
from .layout import read_json, write_text
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
    "emulated",
]


def emulated(cfg) -> bool:
    """Whether the servers of this config are the SGLang emulator (a test double)."""
    return cfg["sglang"]["server_module"] == "pdbench.emulator"


class GateError(PdbenchError):
    """A measurement failed the validity gate; the message says which and why."""


def point_rows(ctx: PointContext) -> list[dict]:
    cfg, point, paths = ctx.cfg, ctx.point, ctx.paths
    bench = _last_jsonl(paths.bench)
    filled = read_json(paths.filled) if paths.filled.exists() else {}
    logs = ctx.decode_logs()
    if not logs:
        raise InputError(f"no decode logs in {paths.logs}")
    rows = []
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
            # The servers were the SGLang emulator (a rehearsal): the numbers measure nothing.
            "emulated": emulated(cfg),
        })
    return rows


def gate(ctx: PointContext, rows: Sequence[dict]) -> None:
    """Fail the point when its profiled batch is far below the target."""
    minimum = ctx.cfg["fill"]["min_batch_fraction"] * ctx.point.target_global_batch
    low = [r for r in rows if r["global_batch"] < minimum]
    if low:
        worst = min(low, key=lambda r: r["global_batch"])
        raise GateError(
            f"{ctx.point.experiment}/{ctx.point.name}: snapshot {worst['snapshot']} profiled a "
            f"global batch of {worst['global_batch']}, below fill.min_batch_fraction "
            f"({ctx.cfg['fill']['min_batch_fraction']}) x target "
            f"{ctx.point.target_global_batch}; the fill ended by {worst['fill_ended_by']}"
        )


def write_csv(path: str | os.PathLike, rows: Sequence[dict]) -> None:
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buf.getvalue())


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


def _last_jsonl(path: Path) -> dict:
    try:
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        return json.loads(lines[-1]) if lines else {}
    except OSError:
        return {}
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: last line is not JSON: {exc}") from None


def _round(value, digits: int = 4):
    return None if value is None else round(float(value), digits)
