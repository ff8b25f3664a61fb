"""Stage: stop what a point started (rule ``teardown``), and everything on failure.

:func:`teardown_point` ends a measured point: its server and client steps stop and the
holder job it submitted is cancelled, unless ``site.keep_allocation`` keeps them for more
snapshots or ``site.reuse_allocation`` passes the allocation to the next point of the
same size; on shared servers (``site.share_servers``) a point that is not its group's
last stops only its router and client, and drains and resets the servers for the next
point (:func:`reset_shared_servers`). :func:`stop_all` (Snakemake's ``onerror``, which
also runs after Ctrl-C) stops every step and ``srun`` client recorded under a results tree and cancels the
holder jobs pdbench submitted; adopted allocations are left running, only pdbench's
steps in them end.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path

from . import commands, slurm
from .context import PointContext, now
from .grid import Point, allocation_neighbours
from .http import HTTPCallError, call
from .layout import ResultsPaths, read_json
from .loglines import LogFollower
from .steps import allocation_alive, marker_alive, release_allocation, stop_step
from .topology import NodePlan
from .wait import wait_for


def servers_passed_to(cfg: Mapping, point: Point) -> Point | None:
    """On shared servers (site.share_servers): the next point of the group, which takes
    this point's servers over once its teardown drained and reset them; None: this
    point's teardown stops its servers (or keeps them, site.keep_allocation)."""
    _, successor = allocation_neighbours(cfg, point)
    return successor if point.shares_servers else None


def teardown_point(ctx: PointContext) -> dict:
    """Stop the point's servers and release its allocation, as the config says."""
    # With site.reuse_allocation the next point of the same size adopts the holder; on
    # shared servers (site.share_servers) it adopts the servers too, so they are passed on
    # even with site.keep_allocation (which then keeps them after the group's last point).
    _, successor = allocation_neighbours(ctx.cfg, ctx.point)
    passes_servers = servers_passed_to(ctx.cfg, ctx.point) is not None
    if ctx.cfg["site"]["keep_allocation"] and not passes_servers:
        # Servers and allocation stay up for more snapshots; `pdbench stop-all` ends them.
        return {"kept": True, "stopped_steps": [], "cancelled_job": None}
    if passes_servers:
        name = f"{successor.experiment}/{successor.name}"
        result = stop_point(ctx, release=False,
                            only=[ctx.paths.ready("router"), ctx.paths.client])
        result["reset"] = reset_shared_servers(ctx)
        result["servers_passed_to"] = result["allocation_passed_to"] = name
        result["at"] = now()
        return result
    result = stop_point(ctx, release=successor is None)
    if successor is not None:
        result["allocation_passed_to"] = f"{successor.experiment}/{successor.name}"
    return result


def stop_point(ctx: PointContext, *, release: bool = True,
               only: list[Path] | None = None) -> dict:
    """Stop everything pdbench started for this point (``only``: the steps of these
    markers); keep adopted allocations."""
    stopped = []
    markers = [*ctx.paths.ready_markers(), ctx.paths.client] if only is None else only
    for marker_path in markers:
        if marker_path.exists():
            marker = read_json(marker_path)
            if marker.get("step_id"):
                stop_step(marker)
                stopped.append(marker["step_id"])
    cancelled = None
    if ctx.paths.allocation.exists():
        alloc = read_json(ctx.paths.allocation)
        if release and release_allocation(alloc):
            cancelled = alloc["job_id"]
    return {"stopped_steps": stopped, "cancelled_job": cancelled,
            "at": now()}


def reset_requests(plan: NodePlan) -> list[commands.ControlRequest]:
    """The reset's call to each started server (``plan.started_servers``, in that order):
    every prefill group, the idle ones too, and decode."""
    return [commands.control_request("flush_cache", server.url)
            for server in plan.started_servers]


def reset_shared_servers(ctx: PointContext) -> dict:
    """Between two points on shared servers, once this point's router and client are
    stopped: every started server flushes its cache, which SGLang does only when no
    request runs or waits (``/flush_cache`` answers 400 otherwise). Decode counts as
    empty when its logs say so since the last request: a "Cache flushed successfully!"
    and no "Cache not flushed because there are pending requests" (pdbench.loglines).
    Refusals are retried every 2 s within ``timeouts.drain_s``."""
    follower = LogFollower(ctx.decode_logs(), from_end=True)
    servers = ctx.plan.started_servers
    requests = reset_requests(ctx.plan)
    state = {"rounds": 0, "refused": [], "flushed": 0, "pending": None, "sent": 0.0}

    def send() -> None:
        state.update(rounds=state["rounds"] + 1, refused=[], flushed=0, pending=None,
                     sent=time.monotonic())
        follower.read()  # what decode logged before this request is not its answer
        for server, req in zip(servers, requests):
            try:
                call(req.method, req.url, timeout_s=60, retry=False)
            except HTTPCallError as exc:
                state["refused"].append(f"{server.name}: {str(exc).splitlines()[0]}")

    def step() -> dict | None:
        if state["rounds"] == 0:
            send()
        for rec in follower.read():
            if rec["kind"] == "cache_flushed":
                state["flushed"] += 1
            elif rec["kind"] == "cache_not_flushed":
                state["pending"] = {"queue_req": rec["queue_req"],
                                    "running_req": rec["running_req"]}
        if not state["refused"] and state["pending"] is None and state["flushed"]:
            return {"flushed_at": now(), "rounds": state["rounds"],
                    "servers": [s.name for s in servers],
                    "decode_log_flushed_records": state["flushed"]}
        if (state["refused"] or state["pending"]) and time.monotonic() - state["sent"] >= 2:
            send()
        return None

    def why(waited: float) -> str:
        return (f"shared servers not empty after {waited:.0f} s (timeouts.drain_s): "
                + ("; ".join(state["refused"]) or "no refusal")
                + (f"; decode's log: {state['pending']}" if state["pending"] else
                   "" if state["flushed"] else "; decode's log shows no flush"))

    return wait_for("the shared servers' drain and cache flush", step,
                    timeout_s=ctx.cfg["timeouts"]["drain_s"], check_run=ctx.check_run,
                    poll_s=0.5, on_timeout=why)


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
                stop_step(marker)
                stopped.append(marker["step_id"])
            except Exception:  # noqa: BLE001 - teardown must go on with the rest
                continue
        alive = allocation_alive(alloc)
        if keep_servers:
            if alive:
                kept.append(f"{paths.root} (job {alloc['job_id']})")
        elif alive and release_allocation(alloc):
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
