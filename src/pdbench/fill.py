"""Stage: fill the decode batch, and release it (rules ``fill`` and ``release``).

The runbook's steps 6-9: ``/slow_down`` on decode, the held benchmark client let go,
every decode rank's ``#running-req`` followed in the logs until the batch is full
(``reached``), stuck below the target with requests queued (``plateaued``) or the
configured time is up (``timeout``); then ``/slow_down null`` at once, and the release
stage confirms from the logs that every rank decodes without sleeps again. What a log
record means for the fill (full, stuck, sleeping, running freely) is defined in
:mod:`pdbench.filltrack`.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from . import commands, slurm
from .client import dead_message, let_client_go
from .context import PointContext, now, progress
from .dialects import ROOM, server_dp_rule
from .errors import PdbenchError, StageError
from .fillsize import fill_probability
from .filltrack import FillTracker, release_requested
from .http import call
from .layout import read_json, write_csv, write_json
from .loglines import LogFollower
from .steps import check_servers
from .wait import wait_for

CURVE_EVERY_S = 5.0



def fill_sleep_s(ctx: PointContext) -> tuple[float, str]:
    """The slow_down sleep per forward, and why.

    Each sleeping forward lets prefill deliver more requests; each forward also advances
    every admitted request by one token. The fill must finish well before the first
    requests reach output_len, or requests finish during the fill and the batch never
    grows to the target. With 'auto' the sleep is set so the target arrives within a
    quarter of output_len forwards at the prefill supply the config implies:
    sleep = target per rank x DP ranks / (output_len / 4) / supply, with the supply
    estimated from the first forwards (initially: one request per rank per second),
    clamped to [1, 180] s (180 s is the runbook's choice at 768 requests per rank).
    """
    value = ctx.cfg["fill"]["sleep_s"]
    if value != "auto":
        return float(value), "configured (fill.sleep_s)"
    forwards = max(1.0, ctx.cfg["workload"]["output_len"] / 4)
    per_forward = ctx.point.target_global_batch / forwards
    supply = float(ctx.point.decode_dp)  # requests/s, a conservative first guess
    sleep = min(180.0, max(1.0, math.ceil(per_forward / supply)))
    why = (f"auto: target {ctx.point.target_global_batch} requests within output_len/4 = "
           f"{forwards:.0f} forwards at ~{supply:.0f} requests/s of prefill supply")
    return sleep, why


def _round_robin_hint(version: str, methods: tuple[str, ...]) -> str:
    if "decode_round_robin" in methods:
        return "server_args.decode.load-balance-method: decode_round_robin"
    if "auto" in methods:
        return "server_args.decode.load-balance-method: auto (round robin on decode)"
    return (f"SGLang {version} has no round-robin routing on a PD decode server (0.5.7 "
            "has decode_round_robin, 0.5.8 and later route decode round robin by default)")


def shortfall_reasons(ctx: PointContext, status: dict) -> list[str]:
    """One line per rank that stayed below the fill threshold: its batch, and why when
    the logs and the config tell (too few requests routed to it, or admission stuck)."""
    cfg, point = ctx.cfg, ctx.point
    threshold, dp = status["threshold"], point.decode_dp
    prompts = commands.client_prompts(cfg, point)
    rule, method = server_dp_rule(cfg, "decode", ctx.dialect)
    at = f"at global batch {status['global_running_req']} of {point.target_global_batch}"
    hint = _round_robin_hint(ctx.dialect.version, ctx.dialect.load_balance_methods)
    reasons = []
    for short in status.get("short_ranks", []):
        rank, running, queued = short["rank"], short["running_req"], short["queue_req"]
        if short["stopped"] == "starved" and rule == ROOM:
            needed = commands.fill_prompts(cfg, point)
            reasons.append(
                f"dp{rank} received {running} of {threshold} requests {at}: SGLang "
                f"{ctx.dialect.version} decode picks DP ranks by bootstrap_room % {dp} "
                f"(load-balance-method {method}) and the router's rooms are random, so "
                f"{prompts} prompts fill every rank only with probability "
                f"{fill_probability(prompts, dp, threshold):.4g}; raise workload.num_prompts "
                f"(at least {needed} for {cfg['fill']['rank_fill_probability']}) or use "
                f"round-robin balance ({hint})")
        elif short["stopped"] == "starved":
            reasons.append(
                f"dp{rank} received {running} of {threshold} requests {at}, and no more "
                f"arrive: decode spreads requests evenly (load-balance-method {method}), so "
                f"fewer than {dp} x {threshold} reached it (the client sends {prompts}; "
                "requests that failed at prefill or in the router do not arrive)")
        elif short["stopped"] == "stuck":
            reasons.append(
                f"dp{rank} stayed at {running} of {threshold} with {queued} queued {at}: "
                f"admission stopped below the target (max-running-requests // dp = "
                f"{point.target_batch_per_rank}; a KV pool, max-total-tokens, too small "
                "for the batch, or SGLang 0.5.17's one-short plateau)")
        else:
            reasons.append(f"dp{rank} at {running} of {threshold} ({queued} queued) {at}: "
                           "still growing when the fill ended")
    return reasons


def _clear_slow_down(ctx: PointContext, *, quiet: bool = False) -> None:
    req = commands.control_request("slow_down", ctx.plan.decode.url, forward_sleep_time=None)
    if not quiet:
        call(req.method, req.url, req.body)
        return
    try:  # on the way out of a failure: leave decode able to run, if it still answers
        call(req.method, req.url, req.body, timeout_s=10, retry=False)
    except PdbenchError:
        pass


def run_fill(ctx: PointContext) -> dict:
    cfg, point = ctx.cfg, ctx.point
    servers = ["decode", "router"] + [s.name for s in ctx.plan.prefill]
    check_servers(ctx, servers)  # every server, before anything is sent
    sleep_s, why = fill_sleep_s(ctx)
    progress(f"fill: slow_down {sleep_s:g} s per forward ({why})")
    follower = LogFollower(ctx.decode_logs(), from_end=True)
    tracker = FillTracker(point.target_batch_per_rank, ranks=point.decode_dp,
                          target_fraction=cfg["fill"]["target_fraction"],
                          plateau_forwards=cfg["fill"]["plateau_forwards"],
                          requests=commands.client_prompts(cfg, point))
    started = time.monotonic()
    started_at = now()
    req = commands.control_request("slow_down", ctx.plan.decode.url, forward_sleep_time=sleep_s)
    call(req.method, req.url, req.body)
    try:
        client = let_client_go(ctx)
    except BaseException:
        _clear_slow_down(ctx, quiet=True)
        raise
    progress(f"fill: client step {client['step_id']} let go; target {tracker.threshold} "
             f"per rank on {point.decode_dp} ranks")
    curve: list[dict] = []
    next_curve = [started]
    timeout = cfg["fill"]["timeout_s"]

    def step() -> str | None:
        tracker.feed_all(follower.read())
        status = tracker.status()
        elapsed = time.monotonic() - started
        ended_by = ("reached" if status["reached"] else "plateaued" if status["plateaued"]
                    else "timeout" if elapsed > timeout else None)
        if time.monotonic() >= next_curve[0] or ended_by:
            curve.append({"t_s": round(elapsed, 2),
                          "global_running_req": status["global_running_req"],
                          "min_running_req": status["min_running_req"],
                          "max_running_req": status["max_running_req"],
                          "ranks_seen": status["ranks_seen"],
                          "queue_req": sum((r["queue_req"] or 0)
                                           for r in status["ranks"].values())})
            progress(f"fill: {elapsed:6.1f} s  global {status['global_running_req']}/"
                     f"{point.target_global_batch}  per rank min {status['min_running_req']}"
                     f" max {status['max_running_req']} (target {tracker.threshold}), "
                     f"{status['ranks_seen']}/{point.decode_dp} ranks")
            next_curve[0] += CURVE_EVERY_S
        return ended_by

    def alive() -> None:
        check_servers(ctx, servers)
        if not slurm.pid_alive(client["srun_pid"]) and not Path(client["output"]).exists():
            raise StageError("fill: " + dead_message(client, "ended before the batch filled"))

    try:
        ended_by = wait_for("the fill", step, timeout_s=None, alive=alive,
                            check_run=ctx.check_run)
    except BaseException:
        _clear_slow_down(ctx, quiet=True)
        raise
    # Release at once (runbook step 9): every forward under slow_down from here on is
    # time lost. The release stage confirms that decode runs again.
    filled_at, offsets = now(), follower.positions()
    release_requested_at = now()
    _clear_slow_down(ctx)  # answered once the sleep under way has ended
    status = tracker.status()
    filled = {
        "ended_by": ended_by,
        "sleep_s": sleep_s,
        "sleep_rule": why,
        "started_at": started_at,
        "filled_at": filled_at,
        "fill_s": round(time.monotonic() - started, 2),
        "release_requested_at": release_requested_at,
        "log_offsets": offsets,
        **{k: status[k] for k in ("target", "threshold", "global_running_req",
                                  "min_running_req", "max_running_req", "ranks_seen")},
        "ranks": status["ranks"],
        "short_ranks": shortfall_reasons(ctx, status) if ended_by != "reached" else [],
        "client_step": client["step_id"],
    }
    write_csv(ctx.paths.fill_curve, list(curve[0]), curve)
    write_json(ctx.paths.filled, filled)
    progress(f"fill ended: {ended_by} after {filled['fill_s']:.0f} s, global batch "
             f"{filled['global_running_req']}")
    for reason in filled["short_ranks"]:
        progress(f"fill: {reason}")
    return filled


def run_release(ctx: PointContext, *, timeout_s: float | None = None) -> dict:
    filled = read_json(ctx.paths.filled)
    check_servers(ctx, ["decode"])
    # The fill cleared slow_down when it ended; clearing it again is harmless (and what
    # a rerun of this stage alone needs). Decode lines logged since the fill ended count.
    follower = LogFollower(ctx.decode_logs(), offsets=filled.get("log_offsets"))
    requested = release_requested(filled) or time.time()
    _clear_slow_down(ctx)
    progress("release: slow_down cleared; waiting for decode to run again")
    # The current sleep must end first (up to one whole sleep).
    timeout_s = timeout_s or filled["sleep_s"] + 300.0
    ranks = ctx.point.decode_dp
    tracker = FillTracker(ctx.point.target_batch_per_rank, ranks=ranks)

    def running() -> dict | None:
        tracker.feed_all(follower.read())
        freely = {r: f for r, f in tracker.ranks.items() if f.running_freely}
        return freely if len(freely) >= ranks else None

    def on_timeout(waited: float) -> str:
        stuck = ranks - sum(f.running_freely for f in tracker.ranks.values())
        return (f"release: decode still not running without sleeps on {stuck} of {ranks} "
                f"ranks after {timeout_s:.0f} s")

    freely = wait_for("the release", running, timeout_s=timeout_s,
                      alive=lambda: check_servers(ctx, ["decode"]), check_run=ctx.check_run,
                      on_timeout=on_timeout)
    batch = {str(r): f.running_req for r, f in sorted(freely.items())}
    released = {
        "released_at": now(),
        # From the fill's release request (or this stage's, for a fill that has none).
        "release_latency_s": round(time.time() - requested, 2),
        "running_batch": batch,
        "global_running_req": sum(batch.values()),
        "fill_ended_by": filled["ended_by"],
    }
    write_json(ctx.paths.released, released)
    progress(f"release: decode running at global batch {released['global_running_req']} "
             f"after {released['release_latency_s']} s")
    return released


__all__ = ["fill_sleep_s", "run_fill", "run_release"]
