"""Stages 4-5: fill the decode batch, release it, take profile snapshots, collect the client.

The runbook's steps 6-10, automated: ``/slow_down`` on decode, the benchmark client on
node 0 in the background, the decode ranks' ``#running-req`` followed in the logs until
the batch is full (or stuck, or a timeout), ``/slow_down null``, confirmation that decode
runs again, then ``/start_profile`` snapshots whose traces land in the point directory.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
import time
from pathlib import Path

from . import commands, slurm
from .context import PointContext, progress
from .errors import InputError, PdbenchError
from .fill import FillTracker
from .http import call
from .layout import read_json, write_json
from .loglines import parse_line
from .servers import (
    ServerError,
    StepLaunch,
    listed_steps,
    log_tail,
    server_alive,
    start_step,
    step_launch,
    stop_step,
)
from .throughput import rank_key, traces_for

# Waits read the decode logs (or look for trace files) every POLL_S: only the bytes
# appended since the last read, so a short period costs little and every stage sees
# its event (batch full, decode running, traces written) within 50 ms. Whether the
# servers still run (squeue and the srun clients) is checked every CHECK_EVERY_S, which
# keeps the load on slurmctld low while the logs are followed closely.
POLL_S = 0.05
CHECK_EVERY_S = 2.0
CURVE_EVERY_S = 5.0
# A held client arms within seconds; a container image pulled on first use can take
# minutes.
CLIENT_ARM_TIMEOUT_S = 900.0
CLIENT_SIGNAL_ATTEMPTS = 10


class StageError(PdbenchError):
    pass


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


class LogFollower:
    """Reads the records appended to a set of log files since the last call."""

    def __init__(self, paths: list[Path], *, from_end: bool = False,
                 offsets: dict[str, int] | None = None) -> None:
        """Start at each file's end (``from_end``), at the given ``offsets`` (as
        :meth:`positions` returns them; files not named start at 0), or at 0."""
        self.paths = list(paths)
        if offsets is not None:
            self.offsets = {p: int(offsets.get(str(p), 0)) for p in paths}
        else:
            self.offsets = {p: (p.stat().st_size if from_end and p.exists() else 0)
                            for p in paths}
        self.partial = {p: b"" for p in paths}

    def positions(self) -> dict[str, int]:
        return {str(p): off for p, off in self.offsets.items()}

    def read(self) -> list[dict]:
        records = []
        for path in self.paths:
            try:
                with open(path, "rb") as fh:
                    fh.seek(self.offsets[path])
                    data = fh.read()
            except FileNotFoundError:
                continue
            self.offsets[path] += len(data)
            data = self.partial[path] + data
            lines = data.split(b"\n")
            self.partial[path] = lines.pop()
            for raw in lines:
                record = parse_line(raw.decode(errors="replace"))
                if record is not None:
                    record["file"] = str(path)
                    records.append(record)
        return records


def _check_servers(ctx: PointContext, servers: list[str]) -> None:
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


class _Liveness:
    """``_check_servers`` at most every CHECK_EVERY_S (the first call checks at once)."""

    def __init__(self, ctx: PointContext, servers: list[str]) -> None:
        self.ctx, self.servers, self.next = ctx, servers, 0.0

    def check(self) -> None:
        self.ctx.check_run()
        now = time.monotonic()
        if now >= self.next:
            _check_servers(self.ctx, self.servers)
            self.next = now + CHECK_EVERY_S


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


def client_launch(ctx: PointContext) -> tuple[StepLaunch, list[str]]:
    """The benchmark client's step (held at its gate) and the client command itself."""
    argv = commands.client_argv(ctx.cfg, ctx.point, ctx.plan,
                                output_file=ctx.paths.client_output.resolve(),
                                dialect=ctx.dialect)
    launch = step_launch(ctx, "client", [commands.gated_client_argv(argv)], {},
                         [ctx.plan.client_node], "bench_client")
    return launch, argv


def start_profile_request(ctx: PointContext, k: int) -> commands.ControlRequest:
    """``/start_profile`` of snapshot ``k`` to decode node 0."""
    prof = ctx.cfg["profile"]
    return commands.control_request(
        "start_profile", ctx.plan.decode.url, dialect=ctx.dialect,
        output_dir=str(ctx.paths.snapshot_traces(k).resolve()),
        num_steps=prof["num_steps"], activities=prof["activities"],
        with_stack=prof["with_stack"], record_shapes=prof["record_shapes"],
    )


def start_client(ctx: PointContext) -> dict:
    """Start the benchmark client on the client node, held at its gate (see
    :data:`pdbench.commands.CLIENT_GATE_ARMED`): it imports while the servers load and
    sends its first request only when the fill lets it go."""
    plan = ctx.plan
    output = ctx.paths.client_output.resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.exists():
        output.unlink()  # bench_serving appends; one run per file
    launch, argv = client_launch(ctx)
    log = ctx.paths.node_log("bench_client", 0)
    log.unlink(missing_ok=True)  # the gate's lines are read from it: none from a former run
    step = start_step(ctx, launch)
    record = {"job_id": ctx.job_id, **step, "output": str(output), "log": str(log),
              "started_at": _now(), "go_at": None, "argv": argv}
    write_json(ctx.paths.client, record)
    progress(f"client: step {step['step_id']} on {plan.client_node}, held until the fill "
             f"starts; log {log}")
    return record


def _client_dead_message(client: dict, what: str) -> str:
    return (f"the benchmark client (Slurm step {client['step_id']}) {what}; srun "
            f"({client['srun_log']}) ends:\n{log_tail(Path(client['srun_log']), 5)}\n"
            f"its log ({client['log']}) ends:\n{log_tail(Path(client['log']))}")


def let_client_go(ctx: PointContext, *, timeout_s: float = CLIENT_ARM_TIMEOUT_S) -> dict:
    """Wait until the held client is armed, then send it the start signal."""
    client = read_json(ctx.paths.client)
    log = Path(client["log"])
    started = time.monotonic()
    next_report = started + 10.0
    next_check = started  # the client step's liveness (squeue) at most every CHECK_EVERY_S
    while True:
        try:
            armed = commands.CLIENT_GATE_ARMED in log.read_text(errors="replace")
        except FileNotFoundError:
            armed = False
        if armed:
            break
        if time.monotonic() >= next_check:
            if not server_alive(client):
                raise StageError(_client_dead_message(client, "ended before it was armed"))
            next_check = time.monotonic() + CHECK_EVERY_S
        ctx.check_run()
        waited = time.monotonic() - started
        if waited > timeout_s:
            raise StageError(f"the benchmark client is not armed after {timeout_s:.0f} s "
                             f"(no '{commands.CLIENT_GATE_ARMED}' in {log})")
        if time.monotonic() >= next_report:
            progress(f"fill: waiting for the client to start: {waited:.0f} s; last log line: "
                     f"{log_tail(log, 1).strip()[:160]}")
            next_report += 10.0
        time.sleep(POLL_S)
    # Repeated until the client says it was let go (it ignores repeats).
    sent, last_sent, complaint = 0, 0.0, ""
    while commands.CLIENT_GATE_RELEASED not in log.read_text(errors="replace"):
        if time.monotonic() - last_sent >= 1.0:
            if sent >= CLIENT_SIGNAL_ATTEMPTS:
                raise StageError(f"the benchmark client (Slurm step {client['step_id']}) did "
                                 f"not start after {sent} start signals; scancel said: "
                                 f"{complaint or 'nothing'}; its log ends:\n{log_tail(log)}")
            complaint = slurm.signal_step(client["step_id"], "USR1") or complaint
            sent, last_sent = sent + 1, time.monotonic()
            if sent == 1:
                client["go_at"] = _now()
                write_json(ctx.paths.client, client)
            elif not server_alive(client):
                raise StageError(_client_dead_message(client, "ended at its start signal"))
        time.sleep(POLL_S)
    return client


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
    live = _Liveness(ctx, ["decode", "router"] + [s.name for s in ctx.plan.prefill])
    live.check()  # every server, before anything is sent
    decode_url = ctx.plan.decode.url
    sleep_s, why = fill_sleep_s(ctx)
    progress(f"fill: slow_down {sleep_s:g} s per forward ({why})")
    follower = LogFollower(ctx.decode_logs(), from_end=True)
    tracker = FillTracker(point.target_batch_per_rank, ranks=point.decode_dp,
                          target_fraction=cfg["fill"]["target_fraction"],
                          plateau_forwards=cfg["fill"]["plateau_forwards"])
    started = time.monotonic()
    started_at = _now()
    req = commands.control_request("slow_down", decode_url, forward_sleep_time=sleep_s)
    call(req.method, req.url, req.body)
    try:
        client = let_client_go(ctx)
    except BaseException:
        _clear_slow_down(ctx, quiet=True)
        raise
    progress(f"fill: client step {client['step_id']} let go; target {tracker.threshold} "
             f"per rank on {point.decode_dp} ranks")
    curve: list[dict] = []
    ended_by = None
    next_curve = started
    timeout = cfg["fill"]["timeout_s"]
    try:
        while ended_by is None:
            tracker.feed_all(follower.read())
            status = tracker.status()
            elapsed = time.monotonic() - started
            if status["reached"]:
                ended_by = "reached"
            elif status["plateaued"]:
                ended_by = "plateaued"
            elif elapsed > timeout:
                ended_by = "timeout"
            if time.monotonic() >= next_curve or ended_by:
                curve.append({"t_s": round(elapsed, 2), "global_running_req":
                              status["global_running_req"], "min_running_req":
                              status["min_running_req"], "max_running_req":
                              status["max_running_req"], "ranks_seen": status["ranks_seen"],
                              "queue_req": sum((r["queue_req"] or 0) for r in
                                               status["ranks"].values())})
                progress(f"fill: {elapsed:6.1f} s  global {status['global_running_req']}/"
                         f"{point.target_global_batch}  per rank min {status['min_running_req']}"
                         f" max {status['max_running_req']} (target {tracker.threshold}), "
                         f"{status['ranks_seen']}/{point.decode_dp} ranks")
                next_curve += CURVE_EVERY_S
            if ended_by is None:
                live.check()
                if not slurm.pid_alive(client["srun_pid"]) and not Path(client["output"]).exists():
                    raise StageError("fill: " + _client_dead_message(
                        client, "ended before the batch filled"))
                time.sleep(POLL_S)
    except BaseException:
        _clear_slow_down(ctx, quiet=True)
        raise
    # Release at once (runbook step 9): every forward under slow_down from here on is
    # time lost. The release stage confirms that decode runs again.
    filled_at, offsets = _now(), follower.positions()
    release_requested_at = _now()
    _clear_slow_down(ctx)  # answered once the sleep under way has ended
    filled = {
        "ended_by": ended_by,
        "sleep_s": sleep_s,
        "sleep_rule": why,
        "started_at": started_at,
        "filled_at": filled_at,
        "fill_s": round(time.monotonic() - started, 2),
        "release_requested_at": release_requested_at,
        "log_offsets": offsets,
        **{k: tracker.status()[k] for k in ("target", "threshold", "global_running_req",
                                            "min_running_req", "max_running_req",
                                            "ranks_seen")},
        "ranks": tracker.status()["ranks"],
        "client_step": client["step_id"],
    }
    with open(ctx.paths.fill_curve, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(curve[0]))
        writer.writeheader()
        writer.writerows(curve)
    write_json(ctx.paths.filled, filled)
    progress(f"fill ended: {ended_by} after {filled['fill_s']:.0f} s, global batch "
             f"{filled['global_running_req']}")
    return filled


def run_release(ctx: PointContext, *, timeout_s: float | None = None) -> dict:
    filled = read_json(ctx.paths.filled)
    _check_servers(ctx, ["decode"])
    # The fill cleared slow_down when it ended; clearing it again is harmless (and what
    # a rerun of this stage alone needs). Decode lines logged since the fill ended count.
    follower = LogFollower(ctx.decode_logs(), offsets=filled.get("log_offsets"))
    released_at = time.monotonic()
    requested = _release_requested(filled) or time.time()
    _clear_slow_down(ctx)
    progress("release: slow_down cleared; waiting for decode to run again")
    # The current sleep must end first (up to one whole sleep).
    timeout_s = timeout_s or filled["sleep_s"] + 300.0
    seen: dict[int, list[dict]] = {}
    ranks = ctx.point.decode_dp
    live = _Liveness(ctx, ["decode"])
    while True:
        for record in follower.read():
            if record["kind"] in ("decode", "slow_down"):
                seen.setdefault(rank_key(record), []).append(record)
        running = {r: recs for r, recs in seen.items()
                   if len(recs) >= 2 and all(x["kind"] == "decode" for x in recs[-2:])}
        if len(running) >= ranks:
            break
        if time.monotonic() - released_at > timeout_s:
            raise StageError(f"release: decode still not running without sleeps on "
                             f"{ranks - len(running)} of {ranks} ranks after {timeout_s:.0f} s")
        live.check()
        time.sleep(POLL_S)
    batch = {str(r): recs[-1]["running_req"] for r, recs in sorted(running.items())}
    released = {
        "released_at": _now(),
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


def _release_requested(filled: dict) -> float | None:
    """When the fill asked for the release (epoch seconds), if it recorded it."""
    at = filled.get("release_requested_at")
    return dt.datetime.fromisoformat(at).timestamp() if at else None


def _interval_start(ctx: PointContext, k: int) -> float:
    """profile.interval_s counts from the previous snapshot, or for the first one from
    the release request (the batch has run freely since then)."""
    if k > 1:
        return ctx.paths.snapshot(k - 1).stat().st_mtime
    requested = _release_requested(read_json(ctx.paths.filled))
    return requested if requested is not None else ctx.paths.released.stat().st_mtime


def take_snapshot(ctx: PointContext, k: int, *, timeout_s: float = 1800.0) -> dict:
    prof = ctx.cfg["profile"]
    if not ctx.paths.ready("decode").exists():
        raise StageError(
            f"snapshot {k} needs the decode server of {ctx.paths.root} at full batch, and it "
            "is not running (no ready/decode.json): the point was torn down or its servers "
            "are gone. Through Snakemake the point is measured again; to add snapshots to a "
            "measured point on live servers, set site.keep_allocation: true")
    _check_servers(ctx, ["decode"])
    wait = prof["interval_s"] - (time.time() - _interval_start(ctx, k))
    if wait > 0:
        progress(f"snapshot {k}: waiting {wait:.0f} s (profile.interval_s)")
        time.sleep(wait)
    out_dir = ctx.paths.snapshot_traces(k).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    follower = LogFollower(ctx.decode_logs(), from_end=True)
    req = start_profile_request(ctx, k)
    requested_at = _now()
    call(req.method, req.url, req.body, timeout_s=120)
    started = time.monotonic()
    profile_id = None
    done_ranks: set[int] = set()
    ranks = ctx.point.decode_dp
    live = _Liveness(ctx, ["decode"])
    while True:
        for record in follower.read():
            if record["kind"] == "profile_start" and record.get("output_dir") == str(out_dir):
                profile_id = profile_id or record["profile_id"]
            elif record["kind"] == "profile_done" and profile_id:
                done_ranks.add(rank_key(record))
        files = list(traces_for(out_dir, profile_id).values()) if profile_id else []
        if profile_id and len(done_ranks) >= ranks and len(files) >= ranks:
            break
        if time.monotonic() - started > timeout_s:
            raise StageError(
                f"snapshot {k}: after {timeout_s:.0f} s profile {profile_id or '(not started)'}"
                f" has {len(files)} of {ranks} trace files in {out_dir}")
        live.check()
        time.sleep(POLL_S)
    snapshot = {
        "snapshot": k,
        "profile_id": profile_id,
        "output_dir": str(out_dir),
        "request": {"url": req.url, "body": req.body},
        "requested_at": requested_at,
        "done_at": _now(),
        "files": sorted(p.name for p in files),
    }
    write_json(ctx.paths.snapshot(k), snapshot)
    progress(f"snapshot {k}: profile {profile_id}, {len(files)} trace files")
    return snapshot


def collect_bench(ctx: PointContext, *, timeout_s: float = 7200.0) -> dict:
    """Wait for the client to finish and validate its JSONL before it becomes a result."""
    client = read_json(ctx.paths.client)
    started = time.monotonic()
    while slurm.pid_alive(int(client["srun_pid"])):
        ctx.check_run()
        if time.monotonic() - started > timeout_s:
            raise StageError(f"benchmark client still running after {timeout_s:.0f} s; "
                             f"log {client['log']}")
        time.sleep(2.0)
    output = Path(client["output"])
    try:
        result = _valid_client_result(output, Path(client["log"]))
    except PdbenchError as exc:
        # This measurement is not valid: it is kept under attempts/ and a rerun measures
        # again from the client on (on the same servers, if they still run).
        from .layout import MEASUREMENT_DIRS
        from .teardown import set_aside

        moved = set_aside(ctx.paths, client.get("job_id"), MEASUREMENT_DIRS,
                          why="invalid-benchmark")
        raise StageError(f"{exc}\nthe measurement ({', '.join(moved['moved'])}) was moved "
                         f"to {moved['to']}; a rerun measures again") from None
    ctx.paths.bench.parent.mkdir(parents=True, exist_ok=True)
    ctx.paths.bench.write_text(output.read_text())
    return result


def _valid_client_result(output: Path, log: Path) -> dict:
    """The client's last JSON line, if it completed requests and generated tokens."""
    if not output.exists() or not output.read_text().strip():
        raise StageError(f"benchmark client wrote no result ({output}); its log ends:\n"
                         + log_tail(log))
    try:
        result = json.loads(output.read_text().strip().splitlines()[-1])
    except json.JSONDecodeError as exc:
        raise InputError(f"{output}: last line is not JSON: {exc}") from None
    completed = result.get("completed", result.get("batch_size"))
    tokens = result.get("total_output_tokens", result.get("output_throughput"))
    if not completed or not tokens:
        raise StageError(f"benchmark client completed {completed} requests and generated "
                         f"{tokens} tokens ({output}); the point is not valid")
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
    return {"stopped_steps": stopped, "cancelled_job": cancelled, "at": _now()}
