"""Stage: a point's provenance (rule ``point_manifest``; ``results/ep{EP}/{point}/manifest.json``)
and the config that reruns exactly that point (``pdbench rerun-config``).

Everything here is read from files the run left (the stage records, the launcher scripts,
the servers' ``/server_info``, the versions each launched Python reported, the logs and
traces) and from Slurm accounting; nothing is started, so the manifest can be rebuilt
offline at any time. GPU-hours are allocated GPUs x wall time: once from the stage
records (the point's timeline, stage by stage) and once from ``sacct`` (``ElapsedRaw`` x
the allocated ``gres/gpu``) where accounting exists; both are kept and a difference is
flagged.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

from . import commands, localhost
from . import config as pdconfig
from .context import PointContext, now
from .errors import InputError
from .filltrack import iso_epoch
from .layout import ResultsPaths, read_json, read_json_if
from .throughput import emulated

MANIFEST_SCHEMA = 1
# Stage-record GPU-hours and sacct's may differ by this fraction before it is flagged
# (sacct counts the holder job from its start to its end, whole seconds).
GPU_HOURS_TOLERANCE = 0.05
SACCT_FIELDS = ("JobID", "ElapsedRaw", "AllocTRES", "State", "Start", "End")


def sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def raw_files(ctx: PointContext) -> list[Path]:
    """The files the point's numbers come from: decode logs, every snapshot's record and
    traces, the fill's records, the client's result."""
    paths = ctx.paths
    files = [*ctx.decode_logs(), paths.filled, paths.released, paths.bench,
             paths.client_output]
    for k in range(1, ctx.cfg["profile"]["snapshots"] + 1):
        files.append(paths.snapshot(k))
        traces = paths.snapshot_traces(k)
        if traces.is_dir():
            files += sorted(p for p in traces.iterdir() if p.is_file())
    return [f for f in files if f.is_file()]


def file_hashes(ctx: PointContext) -> dict[str, str]:
    """Relative to the point's directory (on shared servers decode's logs are in the
    directory of the point that started them: ``../p1/logs/…``)."""
    root = ctx.paths.root
    return {os.path.relpath(f, root): sha256(f) for f in raw_files(ctx)}


def launched_commands(ctx: PointContext) -> dict[str, dict[str, str]]:
    """Per step (server, router, client): its launcher script (every node rank's
    command) and the srun line that ran it, as written when it started."""
    launched = {}
    # On shared servers the servers were launched from the first point of the group.
    for paths in dict.fromkeys([ctx.servers_paths, ctx.paths]):
        launched.update({step: {"launcher": _text(paths.launcher_script(step)),
                                "srun": _text(paths.srun_script(step))}
                         for step in paths.launched_steps()})
    return launched


def _text(path: Path) -> str | None:
    return path.read_text() if path.is_file() else None


def server_reports(ctx: PointContext) -> dict[str, dict]:
    """Per server: the SGLang version and server args it reported while running, and
    the package versions its Python reported at launch."""
    reports: dict[str, dict] = {}
    for path in ctx.paths.server_infos():
        record = read_json(path)
        info = record.get("info") or {}
        reports[path.stem] = {
            "url": record.get("url"),
            "at": record.get("at"),
            "error": record.get("error"),
            "version": info.get("version"),
            # internal_states is per-DP-rank runtime state (dozens of ranks), not an arg.
            "server_args": {k: v for k, v in info.items()
                            if k not in ("internal_states", "version")},
        }
    roles = {s.name: (ctx.servers_paths, ctx.paths.server_log_role(s.name))
             for s in ctx.plan.servers}
    roles.update({"router": (ctx.paths, "router"), "client": (ctx.paths, "bench_client")})
    for name, (paths, role) in roles.items():
        versions = paths.node_versions(role)
        entry = reports.setdefault(name, {})
        entry["packages"] = read_json_if(versions, None)
    return reports


def orchestrator() -> dict:
    """The Python and packages pdbench itself runs with (the login-node side)."""
    names = ["pdbench"]
    for requirement in importlib.metadata.requires("pdbench") or []:
        if "extra ==" not in requirement:
            names.append(requirement.split(";")[0].split("=")[0].split("<")[0]
                         .split(">")[0].split("[")[0].strip())
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {"python": platform.python_version(), "packages": versions}


def repository(workdir: Path) -> dict:
    """The checkout's commit and whether tracked files differ from it (results/ and
    other ignored or untracked files do not count)."""
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(workdir), *args], capture_output=True,
                                 text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None, "why": f"{workdir} is not a git checkout"}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status), "at": now("seconds")}


# The stages of a point's timeline, in order (the manifest's ``stages`` names them so;
# pdbench.estimate reads earlier runs' times by these names).
STAGE_STARTUP = "servers start-up"
STAGE_ROUTER_CLIENT = "router and client"
STAGE_FILL = "fill"
STAGE_RELEASE = "release"
STAGE_PROFILES = "profiles"
STAGE_TEARDOWN = "drain and teardown"


def allocated_gpus(ctx: PointContext) -> int:
    return localhost.gpus_held(ctx.cfg["site"], len(ctx.allocation["nodes"]))


def timeline(ctx: PointContext, ready: list[dict], client: dict) -> list[dict]:
    """The point's stages as consecutive intervals of its stage records (ISO times);
    ``ready``: its servers' ready markers, ``client``: the client's record."""
    paths = ctx.paths
    infos = [read_json(p) for p in paths.server_infos()]
    filled = read_json_if(paths.filled, {})
    released = read_json_if(paths.released, {})
    snaps = [read_json_if(paths.snapshot(k), {})
             for k in range(1, ctx.cfg["profile"]["snapshots"] + 1)]
    teardown = read_json_if(paths.teardown, {})
    alloc = ctx.allocation
    starts = [r.get("started_at") for r in ready] + [client.get("started_at")]
    starts = [s for s in starts if s]
    # An adopted allocation started before this point: the point starts with its first
    # step (a reused one records when this point took it over).
    begin = (min(starts, key=iso_epoch, default=None) if alloc.get("adopted")
             else alloc.get("start_time"))
    servers_ready = max([r["ready_at"] for r in ready if r.get("role") and r.get("ready_at")]
                        or [i["at"] for i in infos if i.get("at")], key=iso_epoch, default=None)
    events = [
        (STAGE_STARTUP, begin, servers_ready),
        (STAGE_ROUTER_CLIENT, servers_ready, filled.get("started_at")),
        (STAGE_FILL, filled.get("started_at"), filled.get("filled_at")),
        (STAGE_RELEASE, filled.get("release_requested_at"), released.get("released_at")),
        (STAGE_PROFILES, released.get("released_at"),
         max((s.get("done_at") for s in snaps if s.get("done_at")), key=iso_epoch,
             default=None)),
    ]
    events.append((STAGE_TEARDOWN, events[-1][2], teardown.get("at")))
    gpus = allocated_gpus(ctx)
    stages = []
    for name, start, end in events:
        a, b = iso_epoch(start), iso_epoch(end)
        seconds = round(b - a, 3) if a is not None and b is not None and b >= a else None
        stages.append({
            "stage": name, "start": start, "end": end, "seconds": seconds, "gpus": gpus,
            "gpu_hours": None if seconds is None else round(gpus * seconds / 3600.0, 6),
        })
    return stages


def parse_sacct(text: str, job_id: int | str) -> dict:
    """``sacct -X -n -P -o JobID,ElapsedRaw,AllocTRES,State,Start,End`` of one job."""
    for line in text.splitlines():
        fields = line.split("|")
        if len(fields) != len(SACCT_FIELDS) or fields[0] != str(job_id):
            continue
        record = dict(zip(SACCT_FIELDS, fields))
        tres = dict(item.split("=", 1) for item in record["AllocTRES"].split(",")
                    if "=" in item)
        try:
            elapsed = int(record["ElapsedRaw"])
            gpus = int(tres["gres/gpu"]) if "gres/gpu" in tres else None
        except ValueError:
            return {"unavailable": f"sacct gave unreadable values for job {job_id}: {line}"}
        if elapsed < 0:
            return {"unavailable": f"sacct gave a negative elapsed time for job {job_id}"}
        result = {"job_id": str(job_id), "elapsed_s": elapsed, "gpus": gpus,
                  "state": record["State"], "start": record["Start"], "end": record["End"]}
        if gpus is None:
            result["unavailable"] = f"accounting lists no gres/gpu for job {job_id}"
        else:
            result["gpu_hours"] = round(elapsed * gpus / 3600.0, 6)
        return result
    return {"unavailable": f"sacct has no record of job {job_id}"}


def sacct_usage(job_id: int | str) -> dict:
    try:
        out = subprocess.run(
            ["sacct", "-j", str(job_id), "-X", "-n", "-P", "-o", ",".join(SACCT_FIELDS)],
            capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"unavailable": f"sacct did not run: {exc}"}
    if out.returncode != 0:
        reason = (out.stderr.strip().splitlines() or ["no output"])[-1]
        return {"unavailable": f"sacct failed: {reason}"}
    return parse_sacct(out.stdout, job_id)


def gpu_hours(stages: list[dict], sacct: dict, shared_allocation: bool) -> dict:
    known = [s["gpu_hours"] for s in stages if s["gpu_hours"] is not None]
    from_stages = round(sum(known), 6) if known else None
    from_sacct = sacct.get("gpu_hours")
    result = {"from_stage_records": from_stages, "from_sacct": from_sacct,
              "sacct": sacct, "differ": False}
    if shared_allocation and from_sacct is not None:
        result["note"] = ("the allocation served several points: sacct counts all of "
                          "them, the stage records this point only")
    elif from_stages and from_sacct is not None:
        result["differ"] = abs(from_sacct - from_stages) > GPU_HOURS_TOLERANCE * from_stages
    return result


def point_config(cfg: dict, point, expert_location: Path | None = None) -> dict:
    """The resolved config narrowed to one point: what reruns exactly that point. A static
    point reruns from the file it started from (``expert_location``), with no recording
    pass."""
    narrowed = copy.deepcopy(cfg)
    narrowed["grid"] = {"ep_sizes": [point.ep], "prefill_groups": [point.prefill_groups],
                        "eplb": [point.eplb]}
    if expert_location is not None:
        narrowed["eplb"]["static"]["init_expert_location"] = str(expert_location)
    return narrowed


def expert_distribution(location: Path | None) -> dict | None:
    """The expert distribution a static point started from, and its sha256."""
    if location is None:
        return None
    return {"file": str(location),
            "sha256": sha256(location) if location.is_file() else None}


def build_manifest(ctx: PointContext, *, workdir: Path | None = None,
                   sacct: dict | None = None) -> dict:
    point, paths, alloc = ctx.point, ctx.paths, ctx.allocation
    ready = {p.stem: read_json(p) for p in paths.ready_markers()}
    client = read_json_if(paths.client, {})
    stages = timeline(ctx, list(ready.values()), client)
    if sacct is not None:
        usage = sacct
    elif localhost.is_local(alloc):
        usage = {"unavailable": "site.launcher is local: no Slurm accounting"}
    else:
        usage = sacct_usage(alloc["job_id"])
    shared = bool(alloc.get("adopted") or alloc.get("reused_from")
                  or ctx.cfg["site"]["reuse_allocation"])
    container = dict(ctx.cfg["site"]["container"])
    image = str(container.get("image") or "")
    location = commands.static_expert_location(
        ctx.cfg, ResultsPaths(ctx.shared_dir.parent.parent), point)
    return {
        "schema": MANIFEST_SCHEMA,
        "point": {"experiment": point.experiment, "name": point.name, "ep": point.ep,
                  "prefill_groups": point.prefill_groups, "eplb": point.eplb,
                  "decode_gpus": point.decode_gpus},
        "emulated": emulated(ctx.cfg),
        "built_at": now("seconds"),
        "config": point_config(ctx.cfg, point, location),
        "expert_distribution": expert_distribution(location),
        "plan": read_json_if(paths.plan, None),
        "commands": launched_commands(ctx),
        "container": {
            "runtime": container.get("runtime"),
            "image": image or None,
            # Only a reference pinned by digest names its digest; pyxis and apptainer
            # report none for a tag or a .sqsh file.
            "digest": image.split("@", 1)[1] if "@sha256:" in image else None,
        },
        "sglang": {"configured_version": ctx.cfg["sglang"]["version"],
                   "servers": server_reports(ctx)},
        "orchestrator": orchestrator(),
        "repository": repository(workdir or Path.cwd()),
        "slurm": {
            "job_id": alloc["job_id"],
            "nodelist": alloc.get("nodelist"),
            "adopted": bool(alloc.get("adopted")),
            "launcher": alloc.get("launcher", "slurm"),
            "steps": {**{name: m.get("step_id") for name, m in ready.items()},
                      **({"client": client["step_id"]} if client.get("step_id") else {})},
        },
        "shared_servers": shared_servers(ctx, ready),
        "stages": stages,
        "gpu_hours": gpu_hours(stages, usage, shared),
        "files_sha256": file_hashes(ctx),
    }


def shared_servers(ctx: PointContext, ready: dict[str, dict]) -> dict | None:
    """On shared servers (site.share_servers): the group, who started the servers, the
    prefill groups left idle (their GPUs are in this point's GPU-hours), and the drain
    and reset the previous point's teardown did before this point's fill."""
    from .grid import grid_points, server_neighbours, share_key

    point = ctx.point
    if not point.shares_servers:
        return None
    previous, following = server_neighbours(ctx.cfg, point)
    started_by = ctx.servers_started_by
    reset = None
    if previous is not None and started_by != f"{point.experiment}/{point.name}":
        before = ctx.paths.results.point(previous.experiment, previous.name).teardown
        reset = read_json_if(before, {}).get("reset")
    return {
        "group": [f"{p.experiment}/{p.name}" for p in grid_points(ctx.cfg)
                  if p.shares_servers and share_key(p) == share_key(point)],
        "servers_started_by": started_by,
        "started_here": started_by == f"{point.experiment}/{point.name}",
        "taken_over_from": {name: m["shared_from"] for name, m in ready.items()
                            if m.get("shared_from")},
        "idle_prefill": [s.name for s in ctx.plan.idle_prefill],
        "idle_prefill_gpus": sum(s.gpus for s in ctx.plan.idle_prefill),
        "reset_before_fill": reset,
        "passed_to": None if following is None else f"{following.experiment}/{following.name}",
    }


def rerun_config(manifest_path: str | Path) -> dict:
    """The config a manifest records, validated: it reruns exactly that point."""
    manifest = read_json(manifest_path)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("config"), dict):
        raise InputError(f"{manifest_path}: not a pdbench manifest (no 'config' mapping)")
    if manifest.get("schema") != MANIFEST_SCHEMA:
        raise InputError(f"{manifest_path}: manifest schema {manifest.get('schema')!r}, "
                         f"this pdbench reads {MANIFEST_SCHEMA}")
    cfg = pdconfig.validate(manifest["config"], source=str(manifest_path))
    points = pdconfig.grid_points(cfg)
    want = manifest.get("point") or {}
    if [(p.experiment, p.name) for p in points] != [(want.get("experiment"), want.get("name"))]:
        raise InputError(f"{manifest_path}: its config's grid is not exactly point "
                         f"{want.get('experiment')}/{want.get('name')}")
    return manifest["config"]
