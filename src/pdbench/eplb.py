"""Stage: static EPLB's recording pass (rules ``expert_record_start``, ``expert_dump``).

The point that records for its EP size (``Point.records_experts``, :mod:`pdbench.grid`)
runs its decode with SGLang's ``stat`` recorder and an unbounded buffer
(:mod:`pdbench.commands`). ``/start_expert_distribution_record`` goes to decode node 0
before the fill, so the recording covers the batch from empty to full; after the release,
``eplb.static.record_s`` at full batch, ``/dump_expert_distribution_record`` makes rank 0
write ``expert_distribution_recorder_{time}.pt`` into ``SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR``
(the point's ``expert_distribution/`` on the shared filesystem). That file is copied to
the experiment's ``eplb/expert_distribution.pt``, which the static points' decode starts
from (``--init-expert-location``), with ``eplb/recording.json`` saying where it came from.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path

from . import commands
from .context import PointContext, now, progress
from .errors import StageError
from .filltrack import release_requested
from .http import call
from .layout import ExperimentPaths, read_json, write_json
from .steps import check_servers
from .wait import wait_for

DUMP_TIMEOUT_S = 600.0
DUMP_GLOB = "expert_distribution_recorder_*.pt"


def _check_recorder(ctx: PointContext) -> None:
    if not ctx.point.records_experts:
        raise StageError(
            f"{ctx.paths.root}: this point does not record the expert distribution (the "
            f"recording pass of {ctx.point.experiment} is its first 'none' point, and only "
            "when grid.eplb has 'static' without eplb.static.init_expert_location)")


def start_request(ctx: PointContext) -> commands.ControlRequest:
    return commands.control_request("start_expert_distribution_record", ctx.plan.decode.url)


def dump_request(ctx: PointContext) -> commands.ControlRequest:
    return commands.control_request("dump_expert_distribution_record", ctx.plan.decode.url)


def start_recording(ctx: PointContext) -> dict:
    """``/start_expert_distribution_record`` to decode node 0 (before the fill)."""
    _check_recorder(ctx)
    check_servers(ctx, ["decode"])
    req = start_request(ctx)
    requested_at = now()
    call(req.method, req.url, req.body, timeout_s=120)
    started = {"request": {"url": req.url, "body": req.body}, "requested_at": requested_at,
               "answered_at": now(), "recorder_dir": str(ctx.shared_dir.joinpath(
                   ctx.paths.expert_distribution_dir.name))}
    write_json(ctx.paths.expert_record_started, started)
    progress(f"expert distribution: recording on {ctx.plan.decode.url}")
    return started


def _full_batch_since(ctx: PointContext) -> float:
    requested = release_requested(read_json(ctx.paths.filled))
    return requested if requested is not None else ctx.paths.released.stat().st_mtime


def _new_dump(recorder_dir: Path, before: set[str]) -> Path | None:
    """The dump rank 0 wrote after the request, once its size holds still."""
    fresh = sorted(p for p in recorder_dir.glob(DUMP_GLOB) if p.name not in before)
    if not fresh:
        return None
    path = fresh[-1]
    size = path.stat().st_size
    time.sleep(0.5)
    return path if size and path.stat().st_size == size else None


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def dump_recording(ctx: PointContext, *, timeout_s: float = DUMP_TIMEOUT_S) -> dict:
    """After ``eplb.static.record_s`` at full batch: dump, wait for rank 0's file, copy
    it to the experiment's ``eplb/expert_distribution.pt``."""
    _check_recorder(ctx)
    if not ctx.paths.expert_record_started.exists():
        raise StageError(f"{ctx.paths.expert_record_started}: missing; the recording was "
                         "never started on this point's decode server")
    check_servers(ctx, ["decode"])
    record_s = ctx.cfg["eplb"]["static"]["record_s"]
    wait = record_s - (time.time() - _full_batch_since(ctx))
    if wait > 0:
        progress(f"expert distribution: recording {wait:.0f} s more at full batch "
                 "(eplb.static.record_s)")
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            ctx.check_run()
            time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
        check_servers(ctx, ["decode"])
    recorder_dir = ctx.paths.expert_distribution_dir
    before = {p.name for p in recorder_dir.glob(DUMP_GLOB)}
    req = dump_request(ctx)
    requested_at = now()
    # No retry: every dump resets the recorder, so a second one would hold nothing.
    call(req.method, req.url, req.body, timeout_s=timeout_s, retry=False)
    source = wait_for(
        "expert distribution dump", lambda: _new_dump(recorder_dir, before),
        timeout_s=timeout_s, alive=lambda: check_servers(ctx, ["decode"]),
        check_run=ctx.check_run,
        on_timeout=lambda waited: f"no new {DUMP_GLOB} in {recorder_dir} {waited:.0f} s after "
                                  "/dump_expert_distribution_record (rank 0 writes it there, "
                                  "SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR)",
    )
    experiment = ExperimentPaths(ctx.paths.root.parent)
    target = experiment.expert_distribution
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    shutil.copyfile(source, partial)
    os.replace(partial, target)
    recording = {
        "point": ctx.point.name,
        "source": str(source),
        "file": str(target),
        "sha256": sha256(target),
        "record_s": record_s,
        "full_batch_since": _full_batch_since(ctx),
        "started": read_json(ctx.paths.expert_record_started),
        "dump": {"url": req.url, "requested_at": requested_at, "written_at": now()},
    }
    write_json(experiment.expert_recording, recording)
    progress(f"expert distribution: {source.name} -> {target}")
    return recording


__all__ = ["dump_recording", "dump_request", "start_recording", "start_request"]
