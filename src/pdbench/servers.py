"""Stage 3: place prefill groups, the decode server and the router into the allocation.

Each server is one ``srun --jobid J --overlap`` step with one task per node; the node's
command is chosen by ``SLURM_NODEID`` in a launcher script written to
``commands/<server>.sh`` (the exact commands, for provenance). The ``srun`` client runs
in a session of its own so the step outlives this process; its pid and the step id go
into the ready marker. Readiness is node 0's ``/health`` answering 200 (servers), or the
router's ``/readiness`` answering 200 with every worker registered and one request
answered through it. Waits are bounded and print what they wait for, for how long, and
the last line of the log; a server that dies while starting fails the stage with its
log tail, and the step is cancelled.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import commands, slurm
from .context import PointContext, progress
from .errors import PdbenchError
from .http import HTTPCallError, call, probe
from .layout import read_json, write_json, write_text
from .wait import wait_for

READY_TIMEOUT_S = 3600.0
ROUTER_READY_TIMEOUT_S = 600.0


class ServerError(PdbenchError):
    """A server failed to start or died; the message names it and quotes its log."""


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - 16384))
            text = fh.read().decode(errors="replace")
    except OSError:
        return f"(no log at {path})"
    tail = text.splitlines()[-lines:]
    return "\n".join(f"    {line[:300]}" for line in tail) or f"(empty log {path})"


def last_line(path: Path) -> str:
    tail = log_tail(path, 1).strip()
    return tail[:160]


def step_name(ctx: PointContext, server: str) -> str:
    return f"pdbench-{ctx.point.experiment}-{ctx.point.name}-{server}"


@dataclass(frozen=True)
class StepLaunch:
    """Everything one Slurm step of a point runs, before anything is written or started:
    the launcher script (every node's command, by ``SLURM_NODEID``) and its ``srun``."""

    server: str
    step_name: str
    nodes: list[str]
    script_path: Path
    script: str
    srun: list[str]


def step_launch(ctx: PointContext, server: str, argvs: list[list[str]], env: dict,
                nodes: list[str], log_role: str) -> StepLaunch:
    script_path = ctx.paths.launcher_script(server)
    script = commands.node_launcher_script(
        argvs,
        env,
        log_dir=ctx.paths.logs.resolve(),
        role_name=log_role,
        node_names=nodes,
        required_env=ctx.cfg["site"]["secret_env"],
    )
    name = step_name(ctx, server)
    srun = commands.srun_argv(ctx.cfg, job_id=ctx.job_id, nodes=nodes,
                              script_path=script_path.resolve(), step_name=name)
    return StepLaunch(server, name, list(nodes), script_path, script, srun)


def server_launch(ctx: PointContext, server: str) -> StepLaunch:
    """Prefill group g or the decode server."""
    spec = ctx.plan.server(server)
    argvs = commands.server_argvs(ctx.cfg, ctx.point, ctx.plan, server)
    env = commands.server_env(ctx.cfg, spec.role, shared_dir=ctx.shared_dir)
    return step_launch(ctx, server, argvs, env, spec.node_names,
                       ctx.paths.server_log_role(server))


def router_launch(ctx: PointContext) -> StepLaunch:
    plan = ctx.plan
    return step_launch(ctx, "router", [commands.router_argv(ctx.cfg, plan)], {},
                       [plan.router_node], "router")


def start_step(ctx: PointContext, launch: StepLaunch) -> dict:
    """Write the launcher script, start its srun detached, return the step record."""
    write_text(launch.script_path, launch.script)
    write_text(ctx.paths.srun_script(launch.server),
               "#!/usr/bin/env bash\n" + commands.render_shell(launch.srun) + "\n")
    srun_log = ctx.paths.srun_log(launch.server)
    pid = slurm.start_detached(launch.srun, srun_log)
    try:
        step_id = slurm.find_step(ctx.job_id, launch.step_name)
    except slurm.SlurmError:
        slurm.stop_process_group(pid)
        raise ServerError(
            f"{launch.server}: srun did not start a step in allocation {ctx.job_id}:\n"
            + log_tail(srun_log)
        ) from None
    except BaseException:
        slurm.stop_process_group(pid)  # interrupted: never leave the detached srun behind
        raise
    return {"step_id": step_id, "step_name": launch.step_name, "srun_pid": pid,
            "srun_log": str(srun_log), "script": str(launch.script_path)}


def _wait_ready(what: str, ready: Callable[[], bool], pid: int, log: Path,
                timeout_s: float, on_dead: Callable[[], str], ctx: PointContext) -> float:
    """Wait until ``ready()``; the srun client ``pid`` must stay alive meanwhile."""
    start = time.monotonic()

    def alive() -> None:
        if not slurm.pid_alive(pid):
            raise ServerError(on_dead())

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


def launch_server(ctx: PointContext, server: str, *, timeout_s: float = READY_TIMEOUT_S) -> dict:
    """Start prefill group g or the decode server and wait for node 0's /health."""
    spec = ctx.plan.server(server)
    log_role = ctx.paths.server_log_role(server)
    missing = commands.missing_secrets(ctx.cfg)
    if missing:
        raise ServerError(f"{server}: environment variable(s) {', '.join(missing)} "
                          "(site.secret_env) are not set")
    started_at = _now()
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
        )
    except BaseException:
        stop_step(ctx.job_id, step)
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
        "ready_at": _now(),
        "startup_s": round(waited, 1),
    }
    write_json(ctx.paths.ready(server), marker)
    progress(f"{server} ready after {waited:.0f} s")
    return marker


def _dead_message(ctx, server, nodes, log_role, step) -> str:
    parts = [f"{server}: the srun step {step['step_id']} ended while starting"]
    for rank, node in enumerate(nodes):
        log = ctx.paths.node_log(log_role, rank)
        parts.append(f"  node rank {rank} ({node}), {log}:\n{log_tail(log, 8)}")
    parts.append(f"  srun: {step['srun_log']}:\n{log_tail(Path(step['srun_log']), 5)}")
    return "\n".join(parts)


def launch_router(ctx: PointContext, *, timeout_s: float = ROUTER_READY_TIMEOUT_S) -> dict:
    plan = ctx.plan
    for server in plan.servers:
        marker = read_json(ctx.paths.ready(server.name))
        if not server_alive(marker):
            raise ServerError(f"router: {server.name} (step {marker['step_id']}) is not running")
    started_at = _now()
    step = start_step(ctx, router_launch(ctx))
    log = ctx.paths.node_log("router", 0)
    expected = len(plan.prefill) + 1

    def ready() -> bool:
        try:
            body = call("GET", f"{plan.router_url}/readiness", timeout_s=5, retry=False).json()
        except (HTTPCallError, ValueError):
            return False
        return int(body.get("healthy_workers", expected)) >= expected

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
        stop_step(ctx.job_id, step)
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
        "test_request": {"completion_tokens": test.get("meta_info", {}).get("completion_tokens")},
        "started_at": started_at,
        "ready_at": _now(),
        "startup_s": round(waited, 1),
    }
    write_json(ctx.paths.ready("router"), marker)
    progress(f"router ready after {waited:.0f} s with {expected} workers; test request answered")
    return marker


def listed_steps(job_id: int) -> set[str]:
    """Ids of the job's steps Slurm lists (one squeue for checking several markers)."""
    return {step_id for step_id, _ in slurm.steps(job_id)}


def server_alive(marker: dict, listed: set[str] | None = None) -> bool:
    """The step still runs: listed by Slurm (``listed``, else asked now) and, where
    visible, its srun client alive."""
    if listed is None:
        listed = listed_steps(marker["job_id"])
    return marker["step_id"] in listed and slurm.pid_alive(int(marker["srun_pid"]))


def marker_alive(marker_path: Path, listed: set[str] | None = None) -> bool:
    """:func:`server_alive` for a marker file; an unreadable marker is not alive."""
    try:
        return server_alive(read_json(marker_path), listed)
    except Exception:  # noqa: BLE001 - an unreadable marker is stale
        return False


def stop_step(job_id: int, step: dict) -> None:
    slurm.cancel(step["step_id"])
    slurm.stop_process_group(int(step["srun_pid"]), grace_s=10.0)


def check_servers(ctx: PointContext, servers: list[str]) -> None:
    """Raise ServerError naming the first of ``servers`` whose step stopped running."""
    listed = listed_steps(ctx.job_id)
    for server in servers:
        marker = read_json(ctx.paths.ready(server))
        if not server_alive(marker, listed):
            # srun names the node whose task ended first ("srun: error: node03: task 1:
            # Killed"); each node's log follows.
            logs = "\n".join(f"  {log}:\n{log_tail(Path(log), 5)}" for log in marker["logs"])
            raise ServerError(
                f"{server} (Slurm step {marker['step_id']} on {','.join(marker['nodes'])}) "
                f"stopped running; srun ({marker['srun_log']}) ends:\n"
                f"{log_tail(Path(marker['srun_log']), 5)}\nits logs end:\n" + logs
            )


def servers_alive(ctx: PointContext, servers: list[str]) -> Callable[[], None]:
    """:func:`check_servers` as a wait's liveness check."""
    return lambda: check_servers(ctx, servers)
