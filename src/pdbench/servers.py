"""Stage: place prefill groups, the decode server and the router into the allocation
(rules ``prefill_server``, ``decode_server``, ``router``).

Each server is one Slurm step (:mod:`pdbench.steps`) whose ready marker records its step
id, srun pid and logs. Readiness is node 0's ``/health`` answering 200 (servers), or the
router's ``/readiness`` answering 200 with every worker registered (MiniLB: its
``/health``) and one request answered through it; a router whose log says it could not
add a worker fails at once (:mod:`pdbench.routers`). Waits are bounded and print what they wait for, for how long, and
the last line of the log; a server that dies while starting fails the stage with its
log tail, and the step is cancelled.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path

from . import commands, slurm
from .context import PointContext, now, progress
from .grid import Point, server_neighbours
from .http import HTTPCallError, call, probe
from .layout import ResultsPaths, read_json, write_json
from .routers import RouterDialect, router_dialect, worker_failures
from .steps import (
    ServerError,
    StepLaunch,
    last_line,
    log_tail,
    server_alive,
    start_step,
    step_launch,
    stop_step,
)
from .wait import wait_for


def _read(log: Path) -> str:
    try:
        return log.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def server_launch(ctx: PointContext, server: str) -> StepLaunch:
    """Prefill group g or the decode server."""
    spec = ctx.plan.server(server)
    location = commands.static_expert_location(
        ctx.cfg, ResultsPaths(ctx.shared_dir.parent.parent), ctx.point)
    argvs = commands.server_argvs(ctx.cfg, ctx.point, ctx.plan, server,
                                  expert_location=location)
    env = commands.server_env(ctx.cfg, spec.role, shared_dir=ctx.shared_dir)
    return step_launch(ctx, server, argvs, env, spec.node_names,
                       ctx.paths.server_log_role(server))


def router_launch(ctx: PointContext) -> StepLaunch:
    plan = ctx.plan
    return step_launch(ctx, "router", [commands.router_argv(ctx.cfg, plan)], {},
                       [plan.router_node], "router")


def _wait_ready(what: str, ready: Callable[[], bool], pid: int, log: Path,
                timeout_s: float, on_dead: Callable[[], str], ctx: PointContext,
                stall_s: float | None = None) -> float:
    """Wait until ``ready()``; the srun client ``pid`` must stay alive meanwhile, and
    (with ``stall_s``) its log must keep growing: a server that neither answers nor
    writes for that long is hung."""
    start = time.monotonic()
    seen = {"size": -1, "at": start}

    def alive() -> None:
        if not slurm.pid_alive(pid):
            raise ServerError(on_dead())
        if stall_s is None:
            return
        size = log.stat().st_size if log.exists() else 0
        now_s = time.monotonic()
        if size != seen["size"]:
            seen.update(size=size, at=now_s)
        elif now_s - seen["at"] > stall_s:
            raise ServerError(
                f"{what}: hung: no answer and no new line in {log} for {stall_s:.0f} s "
                f"(timeouts.server_stall_s); last log lines:\n" + log_tail(log))

    wait_for(
        what,
        lambda: True if ready() else None,
        timeout_s=timeout_s,
        alive=alive,
        check_run=ctx.check_run,
        poll_s=1.0,
        check_every_s=0.0,
        progress=lambda waited: f"waiting for {what}: {waited:.0f}/{timeout_s:.0f} s; last "
                                f"log line: {last_line(log)}",
        progress_at_start=True,
        on_timeout=lambda waited: f"{what}: not ready after {timeout_s:.0f} s; last log "
                                  f"lines of {log}:\n" + log_tail(log),
        error=ServerError,
    )
    return time.monotonic() - start


def servers_taken_over_from(cfg: Mapping, point: Point) -> Point | None:
    """On shared servers (site.share_servers): the previous point of the group, whose
    running servers this point takes over; None: this point starts its servers (if that
    point's are gone at run time, it starts them too: :func:`adopt_server`)."""
    previous, _ = server_neighbours(cfg, point)
    return previous


def launch_server(ctx: PointContext, server: str, *, timeout_s: float | None = None) -> dict:
    """Start prefill group g or the decode server and wait for node 0's /health (within
    ``timeouts.server_ready_s``, unless ``timeout_s`` says otherwise). On shared servers
    (site.share_servers) a point after the group's first takes the previous point's
    server over while it runs; a server that is gone (a rerun after a failure) is started
    again here, and this point's run is then the one that started it."""
    previous = servers_taken_over_from(ctx.cfg, ctx.point)
    if previous is not None:
        adopted = adopt_server(ctx, server, previous)
        if adopted is not None:
            return adopted
    timeouts = ctx.cfg["timeouts"]
    timeout_s = timeouts["server_ready_s"] if timeout_s is None else timeout_s
    spec = ctx.plan.server(server)
    log_role = ctx.paths.server_log_role(server)
    missing = commands.missing_secrets(ctx.cfg)
    if missing:
        raise ServerError(f"{server}: environment variable(s) {', '.join(missing)} "
                          "(site.secret_env) are not set")
    started_at = now()
    step = start_step(ctx, server_launch(ctx, server))
    node0_log = ctx.paths.node_log(log_role, 0)
    progress(f"{server}: step {step['step_id']} on {','.join(spec.node_names)}; "
             f"waiting for {spec.url}/health")
    try:
        waited = _wait_ready(
            f"{server} at {spec.url}",
            ready=lambda: probe(f"{spec.url}/health") == 200,
            pid=step["srun_pid"],
            log=node0_log,
            timeout_s=timeout_s,
            on_dead=lambda: _dead_message(ctx, server, spec.node_names, log_role, step),
            ctx=ctx,
            stall_s=timeouts["server_stall_s"],
        )
    except BaseException:
        stop_step(step)
        raise
    marker = {
        "server": server,
        "role": spec.role,
        "url": spec.url,
        "job_id": ctx.job_id,
        **step,
        "nodes": spec.node_names,
        "logs": [str(ctx.paths.node_log(log_role, r))
                 for r in range(len(spec.nodes))],
        "started_at": started_at,
        "ready_at": now(),
        "startup_s": round(waited, 1),
    }
    if ctx.point.shares_servers:
        marker["servers_started_by"] = f"{ctx.point.experiment}/{ctx.point.name}"
    record_server_info(ctx, server, spec.url)
    write_json(ctx.paths.ready(server), marker)
    progress(f"{server} ready after {waited:.0f} s")
    return marker


def adopt_server(ctx: PointContext, server: str, previous: Point) -> dict | None:
    """On shared servers (site.share_servers): take over the running server of the
    previous point of the group, which its teardown drained and reset. Its ready marker
    is this point's, with when this point took it over (no start-up of its own). None:
    the previous point's server is gone (its step ended, or it has no marker)."""
    name = f"{previous.experiment}/{previous.name}"
    source = ctx.paths.results.point(previous.experiment, previous.name).ready(server)
    marker = read_json(source) if source.exists() else None
    if marker is None or not server_alive(marker):
        what = "has no ready marker" if marker is None else f"step {marker['step_id']} ended"
        progress(f"{server}: the shared server of {name} is gone ({what}): starting it "
                 "again for this point")
        return None
    if probe(f"{marker['url']}/health") != 200:
        raise ServerError(f"{server}: the shared server at {marker['url']} (step "
                          f"{marker['step_id']}) runs but does not answer /health")
    at = now()
    adopted = {**marker, "started_at": at, "ready_at": at, "startup_s": 0.0,
               "shared_from": name,
               "servers_started_by": marker.get("servers_started_by", name),
               "first_ready_at": marker.get("first_ready_at", marker["ready_at"])}
    record_server_info(ctx, server, marker["url"])
    write_json(ctx.paths.ready(server), adopted)
    progress(f"{server}: shared server of {name} taken over (step {marker['step_id']})")
    return adopted


def record_server_info(ctx: PointContext, server: str, url: str) -> None:
    """Keep what the running server says about itself (version, every server arg) for the
    point's provenance; the path is the configured release's. Not fatal: a server that
    does not answer is recorded as such."""
    path = ctx.dialect.server_info_path
    try:
        info = call("GET", f"{url}{path}", timeout_s=30).json()
        if not isinstance(info, dict):
            raise ValueError(f"{path} answered {type(info).__name__}, not an object")
        record = {"url": f"{url}{path}", "at": now(), "info": info}
    except (HTTPCallError, ValueError) as exc:
        record = {"url": f"{url}{path}", "at": now(), "error": str(exc).splitlines()[0]}
    write_json(ctx.paths.server_info(server), record)


def _dead_message(ctx, server, nodes, log_role, step) -> str:
    parts = [f"{server}: the srun step {step['step_id']} ended while starting"]
    for rank, node in enumerate(nodes):
        log = ctx.paths.node_log(log_role, rank)
        parts.append(f"  node rank {rank} ({node}), {log}:\n{log_tail(log, 8)}")
    parts.append(f"  srun: {step['srun_log']}:\n{log_tail(Path(step['srun_log']), 5)}")
    return "\n".join(parts)


def router_ready(url: str, log: Path, gen: RouterDialect, *, mini_lb: bool,
                 expected: int) -> bool:
    """Whether the router at ``url`` is ready with ``expected`` workers, the way its
    generation says (:mod:`pdbench.routers`); ServerError when its log says it could not
    add a worker: it keeps running without it, so waiting would only end at
    ``timeouts.router_ready_s``."""
    failed = worker_failures(_read(log), gen)
    if failed:
        raise ServerError(
            f"router: {gen.implementation} {gen.version} could not add worker(s) "
            f"{', '.join(sorted(set(failed)))} (its log, {log}, says 'Failed job: "
            "type=AddWorker'); last log lines:\n" + log_tail(log))
    if mini_lb:
        # MiniLB has no /readiness and checks no worker: its /health is 200 once it
        # listens; the test request that follows goes through a prefill and the decode.
        return probe(f"{url}{gen.mini_lb_readiness_path}") == 200
    try:
        body = call("GET", f"{url}{gen.readiness_path}", timeout_s=5, retry=False).json()
    except (HTTPCallError, ValueError):
        return False
    if not isinstance(body, dict):
        return False
    return int(body.get(gen.healthy_workers_key, 0)) >= expected


def launch_router(ctx: PointContext, *, timeout_s: float | None = None) -> dict:
    plan = ctx.plan
    timeout_s = ctx.cfg["timeouts"]["router_ready_s"] if timeout_s is None else timeout_s
    for server in plan.servers:
        marker = read_json(ctx.paths.ready(server.name))
        if not server_alive(marker):
            raise ServerError(f"router: {server.name} (step {marker['step_id']}) is not running")
    started_at = now()
    gen = router_dialect(ctx.cfg)
    mini_lb = bool(ctx.cfg["router"]["mini_lb"])
    step = start_step(ctx, router_launch(ctx))
    log = ctx.paths.node_log("router", 0)
    expected = len(plan.prefill) + 1

    def ready() -> bool:
        return router_ready(plan.router_url, log, gen, mini_lb=mini_lb, expected=expected)

    try:
        waited = _wait_ready(
            f"router at {plan.router_url} ({expected} workers)",
            ready=ready,
            pid=step["srun_pid"],
            log=log,
            timeout_s=timeout_s,
            on_dead=lambda: f"router: step {step['step_id']} ended while starting:\n"
            + log_tail(log),
            ctx=ctx,
        )
        test = call(
            "POST",
            f"{plan.router_url}/generate",
            {"text": "pdbench readiness check", "sampling_params": {"max_new_tokens": 4,
                                                                  "temperature": 0}},
            timeout_s=300,
        ).json()
    except BaseException:
        stop_step(step)
        raise
    marker = {
        "server": "router",
        "url": plan.router_url,
        "job_id": ctx.job_id,
        **step,
        "nodes": [plan.router_node],
        "logs": [str(log)],
        "prefill": [s.url for s in plan.prefill],
        "decode": plan.decode.url,
        "implementation": gen.implementation,
        "version": gen.version,
        "mini_lb": mini_lb,
        "test_request": {"completion_tokens": test.get("meta_info", {}).get("completion_tokens")},
        "started_at": started_at,
        "ready_at": now(),
        "startup_s": round(waited, 1),
    }
    write_json(ctx.paths.ready("router"), marker)
    progress(f"router ready after {waited:.0f} s with {expected} workers; test request answered")
    return marker


