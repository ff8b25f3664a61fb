"""Stage: stop what a point started (rule ``teardown``), and everything on failure.

:func:`teardown_point` ends a measured point: its server and client steps stop and the
holder job it submitted is cancelled, unless ``site.keep_allocation`` keeps them for more
snapshots or ``site.reuse_allocation`` passes the allocation to the next point of the
same size. :func:`stop_all` (Snakemake's ``onerror``, which also runs after Ctrl-C)
stops every step and ``srun`` client recorded under a results tree and cancels the
holder jobs pdbench submitted; adopted allocations are left running, only pdbench's
steps in them end.
"""

from __future__ import annotations

import os
from pathlib import Path

from . import slurm
from .context import PointContext, now
from .layout import ResultsPaths, read_json
from .steps import marker_alive, stop_step


def teardown_point(ctx: PointContext) -> dict:
    """Stop the point's servers and release its allocation, as the config says."""
    if ctx.cfg["site"]["keep_allocation"]:
        # Servers and allocation stay up for more snapshots; `pdbench stop-all` ends them.
        return {"kept": True, "stopped_steps": [], "cancelled_job": None}
    from .grid import allocation_neighbours

    # With site.reuse_allocation the next point of the same size adopts the holder.
    _, successor = allocation_neighbours(ctx.cfg, ctx.point)
    result = stop_point(ctx, release_allocation=successor is None)
    if successor is not None:
        result["allocation_passed_to"] = f"{successor.experiment}/{successor.name}"
    return result


def stop_point(ctx: PointContext, *, release_allocation: bool = True) -> dict:
    """Stop everything pdbench started for this point; keep adopted allocations."""
    stopped = []
    for marker_path in [*ctx.paths.ready_markers(), ctx.paths.client]:
        if marker_path.exists():
            marker = read_json(marker_path)
            if marker.get("step_id"):
                stop_step(int(marker["job_id"]), marker)
                stopped.append(marker["step_id"])
    cancelled = None
    if ctx.paths.allocation.exists():
        alloc = read_json(ctx.paths.allocation)
        if release_allocation and not alloc.get("adopted"):
            slurm.cancel(str(alloc["job_id"]))
            cancelled = alloc["job_id"]
    return {"stopped_steps": stopped, "cancelled_job": cancelled,
            "at": now()}


def stop_all(results: str | os.PathLike, reason: str = "requested", *,
             keep_servers: bool = False) -> dict:
    """Stop every step and holder a results tree records; with ``keep_servers`` only the
    clients and the holders still queued (the servers and their allocations stay)."""
    stopped, cancelled, kept = [], [], []
    tree = ResultsPaths(Path(results))
    for paths in tree.point_dirs():
        alloc = read_json(paths.allocation)
        markers = [] if keep_servers else paths.ready_markers()
        client = paths.client
        for marker_path in [*markers, *([client] if client.exists() else [])]:
            try:
                marker = read_json(marker_path)
                if marker_path == client and keep_servers and not marker_alive(client):
                    continue  # a finished client: its srun pid may be reused
                stop_step(int(marker["job_id"]), marker)
                stopped.append(marker["step_id"])
            except Exception:  # noqa: BLE001 - teardown must go on with the rest
                continue
        alive = slurm.job_info(int(alloc["job_id"])).alive
        if keep_servers:
            if alive:
                kept.append(f"{paths.root} (job {alloc['job_id']})")
        elif not alloc.get("adopted") and alive:
            slurm.cancel(str(alloc["job_id"]))
            cancelled.append(alloc["job_id"])
    # Holders still queued: their allocation stage is waiting for them (and ends when
    # they are cancelled).
    for pending in tree.pending_allocations():
        try:
            job_id = int(read_json(pending)["job_id"])
            if slurm.job_info(job_id).alive:
                slurm.cancel(str(job_id))
                cancelled.append(job_id)
        except Exception:  # noqa: BLE001 - teardown must go on with the rest
            continue
    return {"reason": reason, "stopped_steps": stopped, "cancelled_jobs": cancelled,
            "kept": kept}
