"""Stage: torch-profiler snapshots of decode at full batch (rule ``profile_snapshot``).

The runbook's step 10, repeated: ``/start_profile`` to decode node 0 with an output
directory under the point (every rank writes its trace there, on the shared
filesystem), then wait until every DP rank logged the end of its profile and its trace
file is complete. Snapshot k starts ``profile.interval_s`` after snapshot k-1, the
first one after the release request.
"""

from __future__ import annotations

import time

from . import commands
from .context import PointContext, now, progress
from .errors import StageError
from .filltrack import release_requested
from .http import call
from .layout import read_json, write_json
from .loglines import LogFollower
from .steps import check_servers
from .loglines import rank_key
from .trace import traces_for
from .wait import wait_for

SNAPSHOT_TIMEOUT_S = 1800.0



def start_profile_request(ctx: PointContext, k: int) -> commands.ControlRequest:
    """``/start_profile`` of snapshot ``k`` to decode node 0: ``profile.num_steps`` decode
    batches from a step boundary on, the way the release can ask for them
    (``Dialect.decode_snapshot``: by stage, from ``start_step``, or from the request).
    ``merge_profiles`` is never asked for: rank 0 would read every rank's trace into memory
    inside the serving process, and the step times come from the per-rank files anyway."""
    prof = ctx.cfg["profile"]
    return commands.control_request(
        "start_profile", ctx.plan.decode.url, dialect=ctx.dialect,
        output_dir=str(ctx.paths.snapshot_traces(k).resolve()),
        num_steps=prof["num_steps"], activities=prof["activities"],
        with_stack=prof["with_stack"], record_shapes=prof["record_shapes"],
        **ctx.dialect.decode_snapshot_options(),
    )


def interval_start(ctx: PointContext, k: int) -> float:
    """profile.interval_s counts from the previous snapshot, or for the first one from
    the release request (the batch has run freely since then)."""
    if k > 1:
        return ctx.paths.snapshot(k - 1).stat().st_mtime
    requested = release_requested(read_json(ctx.paths.filled))
    return requested if requested is not None else ctx.paths.released.stat().st_mtime


REBALANCE_KINDS = ("eplb_rebalance_start", "eplb_rebalance_end")


def rebalancing(records) -> bool:
    """Whether the last online-EPLB rebalance in ``records`` (one rank's log) started and
    has not ended yet."""
    last = None
    for record in records:
        if record["kind"] in REBALANCE_KINDS:
            last = record["kind"]
    return last == "eplb_rebalance_start"


def wait_for_rebalance_end(ctx: PointContext, k: int, timeout_s: float) -> None:
    """Online EPLB: a snapshot starts once the last rebalance that decode node 0's log
    shows has ended (every rank rebalances together; node 0's ranks stand for them). A
    rebalance that starts during the profile is recorded in the snapshot instead
    (``eplb_rebalance_overlap``)."""
    node0 = ctx.decode_logs()[:1]
    follower = LogFollower(node0)
    state = {"open": rebalancing(follower.read())}
    if not state["open"]:
        return
    progress(f"snapshot {k}: waiting for online EPLB's rebalance to end")

    def ended() -> bool | None:
        for record in follower.read():
            if record["kind"] in REBALANCE_KINDS:
                state["open"] = record["kind"] == "eplb_rebalance_start"
        return None if state["open"] else True

    wait_for(f"snapshot {k}: rebalance end", ended, timeout_s=timeout_s,
             alive=lambda: check_servers(ctx, ["decode"]), check_run=ctx.check_run)


def take_snapshot(ctx: PointContext, k: int, *, timeout_s: float = SNAPSHOT_TIMEOUT_S) -> dict:
    if not ctx.paths.ready("decode").exists():
        raise StageError(
            f"snapshot {k} needs the decode server of {ctx.paths.root} at full batch, and it "
            "is not running (no ready/decode.json): the point was torn down or its servers "
            "are gone. Through Snakemake the point is measured again; to add snapshots to a "
            "measured point on live servers, set site.keep_allocation: true")
    check_servers(ctx, ["decode"])
    wait = ctx.cfg["profile"]["interval_s"] - (time.time() - interval_start(ctx, k))
    if wait > 0:
        progress(f"snapshot {k}: waiting {wait:.0f} s (profile.interval_s)")
        time.sleep(wait)
    if ctx.point.eplb == "online":
        wait_for_rebalance_end(ctx, k, timeout_s)
    out_dir = ctx.paths.snapshot_traces(k).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    follower = LogFollower(ctx.decode_logs(), from_end=True)
    req = start_profile_request(ctx, k)
    requested_at = now()
    call(req.method, req.url, req.body, timeout_s=120)
    ranks = ctx.point.decode_dp
    seen: dict = {"profile_id": None, "done": set(), "files": [], "rebalance_lines": 0}

    def traces_complete() -> list | None:
        for record in follower.read():
            if record["kind"] == "profile_start" and record.get("output_dir") == str(out_dir):
                seen["profile_id"] = seen["profile_id"] or record["profile_id"]
            elif record["kind"] == "profile_done" and seen["profile_id"]:
                seen["done"].add(rank_key(record))
            elif record["kind"] in REBALANCE_KINDS and seen["profile_id"]:
                # online EPLB moved experts while the profile ran: its steps mix placements
                seen["rebalance_lines"] += 1
        profile_id = seen["profile_id"]
        seen["files"] = list(traces_for(out_dir, profile_id).values()) if profile_id else []
        done = profile_id and len(seen["done"]) >= ranks and len(seen["files"]) >= ranks
        return seen["files"] if done else None

    files = wait_for(
        f"snapshot {k}", traces_complete, timeout_s=timeout_s,
        alive=lambda: check_servers(ctx, ["decode"]), check_run=ctx.check_run,
        on_timeout=lambda waited: f"snapshot {k}: after {timeout_s:.0f} s profile "
                                  f"{seen['profile_id'] or '(not started)'} has "
                                  f"{len(seen['files'])} of {ranks} trace files in {out_dir}",
    )
    snapshot = {
        "snapshot": k,
        "profile_id": seen["profile_id"],
        "output_dir": str(out_dir),
        "request": {"url": req.url, "body": req.body},
        "requested_at": requested_at,
        "done_at": now(),
        "files": sorted(p.name for p in files),
    }
    if ctx.point.eplb == "online":
        snapshot["eplb_rebalance_overlap"] = seen["rebalance_lines"] > 0
    write_json(ctx.paths.snapshot(k), snapshot)
    progress(f"snapshot {k}: profile {seen['profile_id']}, {len(files)} trace files")
    return snapshot


__all__ = ["interval_start", "rebalancing", "start_profile_request", "take_snapshot",
           "wait_for_rebalance_end"]
