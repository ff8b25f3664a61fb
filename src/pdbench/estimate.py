"""What a grid will cost before any job: wall time and GPU-hours per point and for the
grid, one allocation per point and with shared servers (docs/cost.md).

A point holds its allocation for four parts, each taken from the point's own earlier
run when the results tree has its manifest, else from earlier runs of its experiment
(the median), else from ``site.estimate``:

    startup   allocation start -> every server ready (weights, DeepEP, CUDA graphs)
    fill      servers ready -> full batch released (router, client, fill, release)
    profiles  release -> last snapshot
    teardown  last snapshot -> servers stopped, allocation released

    GPU-hours(point) = GPUs(point) x (startup + fill + profiles + teardown) / 3600

Points that differ only in their prefill-group count can run on shared servers: one
allocation of the largest point's size, servers started once, the router started per
point and decode drained and reset between points. The reset is a measured part too:
the teardown of a point that passed the servers on (it stopped its router and client,
then drained and flushed the servers), taken from the point's own run, else the median
of its experiment's, else ``site.estimate.reset_s``:

    wall(group)      = max startup + sum(fill + profiles) + sum(reset of all but the last)
                       + max teardown
    GPU-hours(group) = GPUs(largest) x wall(group) / 3600

and the prefill groups a point does not use idle meanwhile, charged to the group and
shown. The lower bound of a group is one start-up of its largest allocation plus the
points' fill and profile times, times its GPUs. Points whose servers need other flags
cannot share: another EP size or EPLB mode is another group, and the point that records
static EPLB's expert distribution starts its decode with the recorder on.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from pathlib import Path

from . import localhost
from .errors import InputError
from .grid import Point, grid_points, sharing_groups
from .layout import ResultsPaths, read_json
from .provenance import (
    STAGE_FILL,
    STAGE_PROFILES,
    STAGE_RELEASE,
    STAGE_ROUTER_CLIENT,
    STAGE_STARTUP,
    STAGE_TEARDOWN,
)

# Each part of a point's allocated time on servers of its own and the manifest stages
# it sums.
PARTS = {
    "startup": (STAGE_STARTUP,),
    "fill": (STAGE_ROUTER_CLIENT, STAGE_FILL, STAGE_RELEASE),
    "profiles": (STAGE_PROFILES,),
    "teardown": (STAGE_TEARDOWN,),
}
# On shared servers, after a point that passes them on: its router and client stopped,
# the servers drained and flushed. Its run measures it as its teardown stage.
RESET = "reset"
# Every part an earlier run can measure, each with its site.estimate.<part>_s guess.
MEASURED_PARTS = (*PARTS, RESET)

FORMULA = ("GPU-hours = allocated GPUs x (startup + fill + profiles + teardown) / 3600; "
           "shared servers: GPUs of the largest point x (one startup + sum of fill + profiles "
           "+ a reset after each point but the last + one teardown) / 3600")


def measured_parts(manifest: Mapping, source: Path) -> dict[str, float]:
    """The parts an earlier run's manifest measured (a part is known when every stage
    it sums has its seconds)."""
    stages = manifest.get("stages")
    if not isinstance(stages, list):
        raise InputError(f"{source}: no list of stages")
    seconds = {}
    for stage in stages:
        if isinstance(stage, Mapping) and isinstance(stage.get("seconds"), (int, float)):
            seconds[stage.get("stage")] = float(stage["seconds"])
    parts = {part: sum(seconds[s] for s in names) for part, names in PARTS.items()
             if all(s in seconds for s in names)}
    # On shared servers a point that took the servers over started none: it measured no
    # start-up. One that passed them on drained and reset them instead of a teardown: its
    # teardown stage is the reset between two points, not what a point on servers of its
    # own spends stopping them.
    shared = manifest.get("shared_servers")
    if isinstance(shared, Mapping):
        if not shared.get("started_here"):
            parts.pop("startup", None)
        if shared.get("passed_to"):
            reset = parts.pop("teardown", None)
            if reset is not None:
                parts[RESET] = reset
    return parts


def earlier_runs(results: Path, points: list[Point]) -> dict[tuple[str, str], dict]:
    """Measured parts per (experiment, point) of the grid's points that have a manifest."""
    tree = ResultsPaths(Path(results))
    runs = {}
    for point in points:
        path = tree.point(point.experiment, point.name).manifest
        if path.is_file():
            runs[(point.experiment, point.name)] = measured_parts(read_json(path), path)
    return runs


def point_parts(cfg: Mapping, point: Point, runs: Mapping,
                names: tuple[str, ...] = tuple(PARTS)) -> dict[str, dict]:
    """Each part's seconds (of ``names``) and where it came from."""
    guesses = cfg["site"]["estimate"]
    own = runs.get((point.experiment, point.name), {})
    parts = {}
    for part in names:
        if part in own:
            parts[part] = {"seconds": own[part],
                           "source": f"measured {point.experiment}/{point.name}"}
            continue
        others = sorted((name, r[part]) for (exp, name), r in runs.items()
                        if exp == point.experiment and part in r)
        if others:
            parts[part] = {"seconds": statistics.median(s for _, s in others),
                           "source": f"median of measured {point.experiment}/"
                                     + ",".join(name for name, _ in others)}
        elif part == RESET and "teardown" in parts and \
                parts["teardown"]["source"].startswith(("measured", "median")):
            # No run passed servers on yet: a reset waits for what a teardown waits for
            # (the client's requests still running after the last snapshot end, then the
            # caches are flushed instead of the servers stopped), so a measured teardown
            # is a closer guess than site.estimate.reset_s.
            parts[part] = {"seconds": parts["teardown"]["seconds"],
                           "source": "teardown, " + parts["teardown"]["source"]}
        else:
            parts[part] = {"seconds": float(guesses[f"{part}_s"]),
                           "source": f"site.estimate.{part}_s"}
    return parts


def _hours(gpus: int, seconds: float) -> float:
    return gpus * seconds / 3600.0


def estimate(cfg: Mapping, results: str | Path | None = None) -> dict:
    """The grid's estimate: per point, one allocation per point, shared servers, bound."""
    points = grid_points(cfg)
    runs = earlier_runs(Path(results), points) if results is not None else {}
    groups, alone = sharing_groups(points)
    # On shared servers every point of a group but its last passes the servers on: a
    # reset follows it.
    passes_on = {p for members in groups for p in members[:-1]}
    rows = {}
    for point in points:
        parts = point_parts(cfg, point, runs,
                            MEASURED_PARTS if point in passes_on else tuple(PARTS))
        wall = sum(parts[part]["seconds"] for part in PARTS)
        gpus = localhost.gpus_held(cfg["site"], point.total_nodes)
        rows[point] = {
            "experiment": point.experiment, "point": point.name, "nodes": point.total_nodes,
            "gpus": gpus, "parts": parts, "wall_s": wall, "gpu_hours": _hours(gpus, wall),
        }
    per_point = {"wall_s": sum(r["wall_s"] for r in rows.values()),
                 "gpu_hours": sum(r["gpu_hours"] for r in rows.values())}

    shared_groups = []
    for members in groups:
        largest = max(members, key=lambda p: p.total_nodes)
        gpus = rows[largest]["gpus"]
        seconds = {part: [rows[p]["parts"][part]["seconds"] for p in members]
                   for part in PARTS}
        measuring = [f + p for f, p in zip(seconds["fill"], seconds["profiles"])]
        resets = sum(rows[p]["parts"][RESET]["seconds"] for p in members[:-1])
        wall = max(seconds["startup"]) + sum(measuring) + resets + max(seconds["teardown"])
        bound = max(seconds["startup"]) + sum(measuring)
        idle = sum(_hours(gpus - rows[p]["gpus"], m) for p, m in zip(members, measuring))
        shared_groups.append({
            "points": [f"{p.experiment}/{p.name}" for p in members],
            "nodes": largest.total_nodes, "gpus": gpus, "wall_s": wall, "resets_s": resets,
            "gpu_hours": _hours(gpus, wall), "idle_prefill_gpu_hours": idle,
            "bound_gpu_hours": _hours(gpus, bound),
            "per_point_gpu_hours": sum(rows[p]["gpu_hours"] for p in members),
        })
    alone_rows = [rows[p] for p, _ in alone]
    shared = {
        "groups": shared_groups,
        "not_shared": [{"point": f"{p.experiment}/{p.name}", "reason": reason}
                       for p, reason in alone],
        "wall_s": sum(g["wall_s"] for g in shared_groups) + sum(r["wall_s"] for r in alone_rows),
        "gpu_hours": (sum(g["gpu_hours"] for g in shared_groups)
                      + sum(r["gpu_hours"] for r in alone_rows)),
    }
    bound = (sum(g["bound_gpu_hours"] for g in shared_groups)
             + sum(_hours(r["gpus"], r["wall_s"] - r["parts"]["teardown"]["seconds"])
                   for r in alone_rows))
    return {
        "formula": FORMULA,
        "share_servers": bool(cfg["site"]["share_servers"]),
        "points": list(rows.values()),
        "per_point": per_point,
        "shared": shared,
        "bound_gpu_hours": bound,
        "measured_points": sorted(f"{e}/{p}" for e, p in runs),
    }


def _duration(seconds: float) -> str:
    if seconds < 59.5:  # a reset or an emulated start-up takes seconds, not minutes
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60.0)
    return f"{minutes // 60}h{minutes % 60:02d}" if minutes >= 60 else f"{minutes} min"


def summary_line(result: Mapping) -> str:
    """One line for the dry run's log."""
    per_point, shared = result["per_point"], result["shared"]
    mode = "shared servers" if result["share_servers"] else "one allocation per point"
    return (f"estimate (docs/cost.md; this run: {mode}): {len(result['points'])} points, "
            "one allocation per "
            f"point {per_point['gpu_hours']:.1f} GPU-hours, {_duration(per_point['wall_s'])} "
            f"one after another; servers shared across prefill-group counts "
            f"{shared['gpu_hours']:.1f} GPU-hours; bound {result['bound_gpu_hours']:.1f} "
            "(pdbench estimate shows every point)")


def as_text(result: Mapping) -> str:
    lines = [f"{'point':<22} {'nodes':>5} {'GPUs':>5} {'startup':>9} {'fill':>9} "
             f"{'profiles':>9} {'teardown':>9} {'wall':>9} {'GPU-h':>8} {'reset':>9}"]
    for row in result["points"]:
        parts = row["parts"]
        # the reset after a point on shared servers is no part of its own allocation
        reset = _duration(parts[RESET]["seconds"]) if RESET in parts else "-"
        lines.append(
            f"{row['experiment'] + '/' + row['point']:<22} {row['nodes']:>5} {row['gpus']:>5} "
            + " ".join(f"{_duration(parts[p]['seconds']):>9}" for p in PARTS)
            + f" {_duration(row['wall_s']):>9} {row['gpu_hours']:>8.1f} {reset:>9}")
    sources = sorted({p["source"] for row in result["points"] for p in row["parts"].values()})
    lines.append("times from: " + "; ".join(sources))
    per_point, shared = result["per_point"], result["shared"]
    lines.append(f"one allocation per point: {per_point['gpu_hours']:.1f} GPU-hours, "
                 f"{_duration(per_point['wall_s'])} one after another")
    for group in shared["groups"]:
        lines.append(
            f"shared servers {' '.join(group['points'])}: one allocation of {group['nodes']} "
            f"nodes ({group['gpus']} GPUs), {group['gpu_hours']:.1f} GPU-hours (one allocation "
            f"per point: {group['per_point_gpu_hours']:.1f}; idle prefill groups "
            f"{group['idle_prefill_gpu_hours']:.1f}; bound {group['bound_gpu_hours']:.1f}), "
            f"{_duration(group['wall_s'])} of which resets {_duration(group['resets_s'])}")
    for point in shared["not_shared"]:
        lines.append(f"own servers {point['point']}: {point['reason']}")
    mode = "on shared servers" if result["share_servers"] else "one allocation per point"
    lines.append(f"this config runs {mode} (site.share_servers)")
    lines.append(f"shared servers: {shared['gpu_hours']:.1f} GPU-hours, "
                 f"{_duration(shared['wall_s'])} one after another; bound "
                 f"{result['bound_gpu_hours']:.1f} GPU-hours")
    lines.append("formula: " + result["formula"])
    return "\n".join(lines)
