"""Every command a grid point would run, for a given node list, without Slurm and
without starting anything (``pdbench render``).

A launch is reviewed before GPU-hours are spent on it: the holder ``sbatch``, the node
plan (``node_list_env.sh``), each server's ``srun`` step with its container options and
its launcher script (every node rank's command and environment), the router, the
benchmark client held at its gate, and the control calls of the fill, the release and
each profile snapshot with their bodies. Each piece comes from the function the stage
itself calls (:func:`pdbench.servers.server_launch`, :func:`pdbench.client.client_launch`,
:func:`pdbench.profile.start_profile_request` …), so what is shown is what would run.

On shared servers (``site.share_servers``) the stages' own answers decide what a point
runs: the point whose servers it takes over (:func:`pdbench.servers.servers_taken_over_from`)
and the one it passes them to (:func:`pdbench.teardown.servers_passed_to`). The point that
starts them shows every server of the group (every prefill group of the largest point,
and decode); a later point shows no holder job and no server, only its router (with its
own prefill groups) and client, which point's servers it runs on and the drain and
reset (:func:`pdbench.teardown.reset_requests`) that precede it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from . import commands, localhost, topology
from .grid import Point, find_point
from .context import PointContext
from .layout import ExperimentPaths, PointPaths

JOB_ID_PLACEHOLDER = "JOBID"


def render_point(cfg: Mapping, experiment: str, point_name: str, nodes: Sequence[str], *,
                 results: str | Path = "results", job_id: int | str | None = None,
                 addresses: Mapping[str, str] | None = None) -> list[dict]:
    """The point's launch as sections ``{"title", "kind", "text"}`` in the order the
    workflow runs them; ``kind`` is ``shell`` (a command line), ``file`` (a file the
    workflow writes), ``http`` (a control call, as the equivalent ``curl``) or ``note``
    (what runs without a command of this point: shared servers taken over)."""
    from . import eplb
    from .allocation import holder_sbatch_argv
    from .client import client_launch
    from .fill import fill_sleep_s
    from .profile import start_profile_request
    from .servers import router_launch, server_launch, servers_taken_over_from
    from .teardown import reset_requests, servers_passed_to

    point: Point = find_point(cfg, experiment, point_name)
    nodes = list(nodes)
    if len(nodes) < point.allocated_nodes:
        from .errors import InputError

        raise InputError(f"{experiment}/{point_name} needs {point.allocated_nodes} nodes; the "
                         f"node list has {len(nodes)}")
    paths = PointPaths.of(results, experiment, point_name)
    local = cfg["site"]["launcher"] == localhost.LAUNCHER
    if local:  # the slots of this host, whatever node names were given
        allocation = localhost.allocation_record(cfg["site"], point.allocated_nodes)
    else:
        allocation = {"job_id": job_id if job_id is not None else JOB_ID_PLACEHOLDER,
                      "nodelist": topology.compress_nodelist(nodes),
                      "addresses": dict(addresses) if addresses else None}
    ctx = PointContext.for_allocation(dict(cfg), point, paths, allocation)
    shell = commands.render_shell
    previous = servers_taken_over_from(cfg, point)
    following = servers_passed_to(cfg, point)

    def reset_sections(passing: Point, receiving: Point) -> list[dict]:
        """``passing``'s teardown: its router and client stopped, then every server it
        started or took over drained and flushed before ``receiving`` takes them over."""
        passing_ctx = PointContext.for_allocation(
            dict(cfg), passing, PointPaths.of(results, passing.experiment, passing.name),
            allocation)
        plan = passing_ctx.plan
        note = {"title": f"drain and reset before {receiving.experiment}/{receiving.name} "
                         f"({passing.experiment}/{passing.name}'s teardown)",
                "kind": "note",
                "text": "Once its router and client are stopped, every server the group\n"
                        "started is asked to flush its cache. SGLang refuses while a request\n"
                        "runs or waits; the calls are repeated every 2 s until decode's log\n"
                        "says the cache was flushed, within timeouts.drain_s."}
        return [note, *({"title": f"reset: flush {server.name}'s cache", "kind": "http",
                         "text": shell(commands.curl_argv(req))}
                        for server, req in zip(plan.started_servers, reset_requests(plan)))]

    if previous is None and local:
        sections = [{"title": f"allocation: {point.allocated_nodes} slot(s) on this host "
                              f"(site.launcher: local; {paths.allocation}): "
                              + ", ".join(f"{n} GPUs {g}" for n, g in
                                          allocation["gpus"].items()),
                     "kind": "note", "text": ""}]
    elif previous is None:
        sections = [{"title": f"allocation: holder job for {point.allocated_nodes} nodes "
                              f"({paths.allocation})", "kind": "shell",
                     "text": shell(holder_sbatch_argv(dict(cfg), point, paths))}]
    else:
        sections = [{"title": f"allocation: {previous.experiment}/{previous.name}'s, taken "
                              "over (site.share_servers); no holder job is submitted",
                     "kind": "note", "text": ""}]
    sections.append({"title": f"node plan ({paths.env_sh})", "kind": "file",
                     "text": ctx.plan.to_env_sh()})
    started = ", ".join(s.name for s in ctx.plan.started_servers)
    idle = ", ".join(s.name for s in ctx.plan.idle_prefill)
    if previous is None:
        if point.shares_servers:
            sections.append({
                "title": f"servers: this point starts the shared servers ({started}"
                         + (f"; {idle} idle until a later point's router uses them"
                            if idle else "") + ")", "kind": "note", "text": ""})
        launches = [server_launch(ctx, s.name) for s in ctx.plan.started_servers]
    else:
        name = f"{previous.experiment}/{previous.name}"
        whose = (f"{name}'s," if ctx.servers_started_by == name
                 else f"started by {ctx.servers_started_by}, passed on by {name},")
        sections.append({
            "title": f"servers: {whose} taken over while they run ({started}"
                     + (f"; {idle} idle" if idle else "") + "); none is launched here",
            "kind": "note", "text": ""})
        sections += reset_sections(previous, point)
        launches = []
    launches.append(router_launch(ctx))
    client, client_argv = client_launch(ctx)
    launches.append(client)
    for launch in launches:
        if launch.local:
            sections.append({"title": f"{launch.server}: local step {launch.step_name} on "
                                      f"{','.join(launch.nodes)} ({launch.runner_path})",
                             "kind": "file", "text": launch.runner})
        else:
            sections.append({"title": f"{launch.server}: Slurm step {launch.step_name} on "
                                      f"{','.join(launch.nodes)}", "kind": "shell",
                             "text": shell(launch.srun)})
        sections.append({"title": f"{launch.server}: launcher script ({launch.script_path})",
                         "kind": "file", "text": launch.script})
    sections.append({"title": "client: the benchmark command the gate runs once let go",
                     "kind": "shell", "text": shell(client_argv)})
    decode = ctx.plan.decode.url
    sleep_s, why = fill_sleep_s(ctx)
    calls = [
        (f"fill: slow decode down ({why})",
         commands.control_request("slow_down", decode, forward_sleep_time=sleep_s)),
    ]
    if point.records_experts:
        calls.insert(0, ("static EPLB's recording pass: start recording before the fill",
                         eplb.start_request(ctx)))
    sections += [{"title": title, "kind": "http", "text": shell(commands.curl_argv(req))}
                 for title, req in calls]
    sections.append({"title": "fill: let the client go (repeated until its log says "
                              "released)", "kind": "shell",
                     "text": "# USR1 to the client step's tasks (pdbench.localhost)" if local
                     else shell(["scancel", "--signal=USR1", f"{allocation['job_id']}.STEP"])})
    release = commands.control_request("slow_down", decode, forward_sleep_time=None)
    sections.append({"title": "release: clear slow_down once every decode rank holds "
                              f"{point.target_batch_per_rank} requests", "kind": "http",
                     "text": shell(commands.curl_argv(release))})
    for k in range(1, cfg["profile"]["snapshots"] + 1):
        sections.append({"title": f"snapshot {k}: profile {cfg['profile']['num_steps']} "
                                  "decode steps", "kind": "http",
                         "text": shell(commands.curl_argv(start_profile_request(ctx, k)))})
    if point.records_experts:
        sections.append({"title": f"static EPLB's recording pass: dump "
                                  f"{cfg['eplb']['static']['record_s']:g} s after the release "
                                  "(eplb.static.record_s), copied to "
                                  f"{ExperimentPaths(ctx.paths.root.parent).expert_distribution}",
                         "kind": "http", "text": shell(commands.curl_argv(eplb.dump_request(ctx)))})
    if following is not None:
        sections.append({"title": "teardown: only this point's router and client are stopped; "
                                  f"the servers go on to {following.experiment}/"
                                  f"{following.name}", "kind": "note", "text": ""})
        sections += reset_sections(point, following)
    elif point.shares_servers:
        sections.append({"title": "teardown: the group's last point stops every server and "
                                  "releases the allocation", "kind": "note", "text": ""})
    return sections


def as_text(sections: list[dict], header: str) -> str:
    """A reviewable document: shell lines as they are, files between markers."""
    lines = [f"# {header}", ""]
    for section in sections:
        lines.append(f"# --- {section['title']}")
        if section["kind"] == "file":
            lines += ["<<'EOF'", section["text"].rstrip("\n"), "EOF"]
        elif section["kind"] == "note":
            lines += [f"# {line}" for line in section["text"].splitlines()]
        else:
            lines.append(section["text"])
        lines.append("")
    return "\n".join(lines)


__all__ = ["JOB_ID_PLACEHOLDER", "as_text", "render_point"]
