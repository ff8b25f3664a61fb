"""The batch and step model of all DP ranks of one server, run on its node 0.

One loop stands for SGLang's schedulers, which run in lock-step under DP attention. Each
iteration is one forward (``forward_ct`` += 1, as SGLang counts them):

1. control requests that arrived meanwhile are applied (``/slow_down``, profiler, flush,
   expert recorder): like SGLang, a request sent during a ``slow_down`` sleep takes effect
   (and is answered) only after that sleep and its forward;
2. admission: decode ranks move requests whose KV has "arrived" from their queue into the
   running batch up to ``max_running_requests // dp`` (one less with
   ``PDBENCH_EMULATOR_PLATEAU_ONE_SHORT=1``); prefill ranks take up to the chunked-prefill
   budget of waiting prompt tokens;
3. with ``slow_down`` set, every rank logs ``Scheduler.run_batch sleep {t}s`` and the loop
   sleeps ``t``;
4. the forward: a decode step lasts ``(STEP_BASE_MS + STEP_PER_REQ_MS x max rank batch)``
   x the EPLB factor; a prefill step lasts its tokens / ``PREFILL_TOKENS_PER_S``;
5. every running request gets one token (streamed out), finished ones leave, and each rank
   with work logs its ``Decode batch`` / ``Prefill batch`` line (every
   ``--decode-log-interval`` decode steps).

Step boundaries follow a model clock on node 0's monotonic clock with absolute deadlines,
so the profiled periods equal the model exactly unless the machine falls more than one step
behind (then the clock resynchronises and that period is longer, like real jitter).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import json
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pdbench.dialects import FAILS, FEWEST_REQUESTS, FEWEST_TOKENS, ROOM

from .args import ServerConfig
from .experts import ExpertRecorder, RecorderError, moe_imbalance
from .tracefmt import TraceRank, write_merged, write_trace

_rid_counter = itertools.count(1)


def new_rid() -> str:
    return f"{os.getpid():x}{next(_rid_counter):010x}{int(time.time() * 1e3) & 0xFFFFFF:06x}"


class Call:
    """What the scheduler reports a request's progress to (an HTTP request or warm-up)."""

    def progress(self, req: Req) -> None:
        pass

    def finish(self, req: Req) -> None:
        pass

    def fail(self, req: Req, message: str) -> None:
        pass

    def flush(self) -> None:
        pass


class Req:
    __slots__ = (
        "rid",
        "call",
        "index",
        "prompt_tokens",
        "max_new",
        "dp",
        "created",
        "aborted",
        "finished",
        "prefill_left",
        "gen0",
        "step0",
        "stream",
        "routed_dp",
        "error",
        "cancel_wait",
        "finish_time",
        "room",
        "room_number",
    )

    def __init__(
        self,
        call: Call,
        index: int,
        prompt_tokens: int,
        max_new: int,
        *,
        stream: bool = False,
        routed_dp: int | None = None,
        rid: str | None = None,
        room_number: int | None = None,
    ):
        self.rid = rid or new_rid()
        self.call = call
        self.index = index
        self.prompt_tokens = max(int(prompt_tokens), 1)
        self.max_new = max(int(max_new), 0)
        self.dp = -1
        self.created = time.monotonic()
        self.aborted = False
        self.finished = False
        self.prefill_left = self.prompt_tokens
        self.gen0 = 0  # tokens generated before joining the running batch
        self.step0 = 0  # the rank's decode-step counter when it joined
        self.stream = stream
        self.routed_dp = routed_dp
        self.error: str | None = None
        self.cancel_wait: Callable[[], None] | None = None
        self.finish_time = 0.0
        self.room: str | None = None
        self.room_number = room_number  # the bootstrap room, where it is an integer

    def generated(self, rank: RankState) -> int:
        if self.finished:
            return self.max_new
        return self.gen0 + (rank.decode_steps - self.step0)


@dataclass
class RankState:
    dp: int
    waiting: deque = field(default_factory=deque)  # prompts to prefill (prefill / plain)
    queue: deque = field(default_factory=deque)  # KV arrived, waiting for a slot (decode)
    running: dict = field(default_factory=dict)  # Req -> None, insertion ordered
    streaming: dict = field(default_factory=dict)  # running requests that stream
    finish_heap: list = field(default_factory=list)  # (finish decode step, seq, Req)
    transfer: int = 0
    transfer_tokens: int = 0
    decode_steps: int = 0
    decode_lines_ct: int = 0
    token_sum: int = 0  # prompt + generated over running
    tokens_since_line: int = 0
    last_line_t: float | None = None
    last_gen_throughput: float = 0.0
    prefill_tokens_since: int = 0
    last_prefill_t: float | None = None
    last_input_throughput: float = 0.0


@dataclass
class Plan:
    kind: str  # DECODE | EXTEND
    bs: list[int]
    toks: list[int]
    extend: list[list[tuple[Req, int]]] | None = None


@dataclass
class ProfileState:
    profile_id: str
    output_dir: str | None  # as requested (None: each node's default)
    num_steps: int | None
    start_ct: int
    stop_ct: int | None
    activities: list[str]
    with_stack: bool
    record_shapes: bool
    by_stage: bool
    stage: str | None
    prefix: str | None
    merge: bool
    active: bool = False
    stage_count: int = 0
    steps: list[dict] = field(default_factory=list)


def default_profile_dir(requested: str | None, env: dict | None = None) -> str:
    env = os.environ if env is None else env
    path = requested or env.get("SGLANG_TORCH_PROFILER_DIR") or "/tmp"
    return os.path.expanduser(path)


def export_traces(cfg: ServerConfig, node: int, meta: dict, steps: list[dict]) -> list[str]:
    """Write the traces of ``node``'s TP ranks for one profile; return the paths."""
    activities = [a.upper() for a in meta.get("activities") or ["CPU", "GPU"]]
    cpu, gpu = "CPU" in activities, "GPU" in activities
    if not (cpu or gpu) or not steps:
        return []
    out_dir = default_profile_dir(meta.get("output_dir"))
    base_ns = int((time.time() - time.monotonic()) * 1e9)
    paths = []
    for tp in cfg.local_tp_ranks(node):
        dp = cfg.dp_of(tp)
        name = cfg.dialect.trace_name(
            profile_id=meta["profile_id"],
            tp=tp,
            dp=dp if cfg.dp > 1 else None,
            ep=cfg.ep_of(tp) if cfg.ep > 1 else None,
            stage=meta.get("stage") if meta.get("by_stage") else None,
            prefix=meta.get("prefix"),
        )
        rank = TraceRank(
            tp=tp,
            dp=dp,
            world_size=cfg.tp,
            local_gpu=tp % cfg.gpus_per_node,
            gpus_per_node=cfg.gpus_per_node,
            pid=100000 + 1000 * node + tp,
        )
        path = os.path.join(out_dir, name)
        write_trace(
            path,
            rank,
            steps,
            cfg.dialect,
            with_stack=meta["with_stack"],
            record_shapes=meta["record_shapes"],
            cpu=cpu,
            gpu=gpu,
            cuda_graph_max_bs=cfg.cuda_graph_max_bs,
            base_ns=base_ns,
        )
        paths.append(path)
    return paths


class ControlError(Exception):
    """A control request the server refuses (HTTP 500 with this message, as SGLang's
    RuntimeError would give)."""


class Engine:
    def __init__(
        self,
        cfg: ServerConfig,
        *,
        emit: Callable[[list[tuple[int, str]]], None],
        log: Callable[[str], None],
        recorder: ExpertRecorder,
        eplb: str,
        on_prefilled: Callable[[list[Req]], None] | None = None,
        remote_profile: Callable[[str, dict, list[dict] | None], Any] | None = None,
        fatal: Callable[[str], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.knobs = cfg.knobs
        self.dialect = cfg.dialect
        self.mode = cfg.mode
        self.ranks = [RankState(d) for d in range(cfg.dp)]
        self.emit = emit  # [(tp_rank, message)] -> printed by the node hosting the rank
        self.log = log  # a line without rank prefix on node 0
        self.recorder = recorder
        self.eplb = eplb
        self.on_prefilled = on_prefilled
        self.remote_profile = remote_profile
        self.fatal = fatal
        self.forward_ct = 0
        self.sleep_s: float | None = None
        self.controls: deque = deque()
        self.wake = asyncio.Event()
        self.profile: ProfileState | None = None
        self.pending_crash: str | None = None
        self.rr = 0
        self.seq = itertools.count()
        self.idle = True
        self.step_waiters: list[asyncio.Future] = []
        self.last_output = 0.0
        self.started = time.monotonic()
        self.cap = cfg.cap_per_rank
        self.cap_eff = max(self.cap - 1, 1) if self.knobs.plateau_one_short else self.cap
        # The MoE share of a decode step scales with the expert-load imbalance per EP rank,
        # relative to the trivial placement of the same physical experts (redundant ones
        # included): EPLB none keeps the configured step, whatever --ep-num-redundant-experts.
        redundant = cfg.ns.ep_num_redundant_experts or 0
        self.moe_imbalance = {
            False: moe_imbalance(cfg.model_path, cfg.ep, False, redundant),
            True: moe_imbalance(cfg.model_path, cfg.ep, True, redundant),
        }
        # Online EPLB rebalances every --eplb-rebalance-num-iterations forward passes, as
        # SGLang's EPLBManager does; until the first one the placement is trivial.
        self.rebalance_every = (
            cfg.ns.eplb_rebalance_num_iterations
            if cfg.ns.enable_eplb and eplb != "static" else None
        )
        self.passes_since_rebalance = 0
        self.rebalances = 0
        self.balanced = eplb == "static"
        self.step_factor = self._eplb_factor()
        self.touched: set[Call] = set()
        self.all_tp = list(range(cfg.tp))
        self.line_tp = [t for t in self.all_tp if t % cfg.attn_tp == 0]  # attn_tp_rank == 0

    # ------------------------------------------------------------------ model

    def _eplb_factor(self) -> float:
        share = self.knobs.moe_share
        ratio = self.moe_imbalance[self.balanced] / self.moe_imbalance[False]
        return (1.0 - share) + share * ratio

    def _eplb_pass_end(self) -> None:
        """SGLang's EPLBManager.on_forward_pass_end: a rebalance every N passes, logged by
        every rank like the release's ``[EPLBManager] rebalance start`` / ``end``."""
        if self.rebalance_every is None:
            return
        self.passes_since_rebalance += 1
        if self.passes_since_rebalance < self.rebalance_every:
            return
        self.passes_since_rebalance = 0
        self.rebalances += 1
        self.emit([(t, "[EPLBManager] rebalance start") for t in self.line_tp])
        self.balanced = True
        self.step_factor = self._eplb_factor()
        self.emit([(t, "[EPLBManager] rebalance end time=0.000s") for t in self.line_tp])

    def decode_step_s(self, max_bs: int) -> float:
        return (
            (self.knobs.step_base_ms + self.knobs.step_per_req_ms * max_bs)
            * 1e-3
            * self.step_factor
        )

    def model_description(self) -> dict:
        return {
            "step_base_ms": self.knobs.step_base_ms,
            "step_per_req_ms": self.knobs.step_per_req_ms,
            "step_factor": self.step_factor,
            "moe_share": self.knobs.moe_share,
            "moe_imbalance": self.moe_imbalance[self.balanced],
            "moe_imbalance_trivial": self.moe_imbalance[False],
            "rebalances": self.rebalances,
            "eplb": self.eplb
            if self.eplb == "static"
            else ("online" if self.cfg.ns.enable_eplb else "none"),
            "prefill_tokens_per_s": self.knobs.prefill_tokens_per_s,
            "profile_overhead": self.knobs.profile_overhead,
            "cap_per_rank": self.cap,
            "admission_cap_per_rank": self.cap_eff,
        }

    # ------------------------------------------------------------------ submission

    def _pick_rank(self, req: Req) -> RankState:
        """The DP rank of a new request, by the release's rule for this server's mode and
        ``--load-balance-method`` (``ServerConfig.dp_rule``, from ``pdbench.dialects``); a
        rank the request names itself (``routed_dp_rank`` / ``data_parallel_rank``, as the
        release reads them) comes first."""
        if req.routed_dp is not None and 0 <= req.routed_dp < len(self.ranks):
            return self.ranks[req.routed_dp]
        return self.ranks[self.route(req.room_number, req.prompt_tokens)]

    def route(self, room: int | None, prompt_tokens: int = 1) -> int:
        """The DP rank the release's DP controller picks for a request with bootstrap room
        ``room`` that names no rank of its own."""
        rule, n = self.cfg.dp_rule, len(self.ranks)
        if rule == ROOM and room is not None:
            return room % n
        if rule == FEWEST_REQUESTS:
            return min(self.ranks, key=lambda r: (self._held(r), r.dp)).dp
        if rule == FEWEST_TOKENS:
            return min(self.ranks, key=lambda r: (self._held_tokens(r), r.dp)).dp
        if rule == FAILS and self.pending_crash is None:
            # The release's DP controller raises here and the server goes down with it.
            self.pending_crash = (
                "DataParallelController hit an exception: "
                + ("NameError: name 'req' is not defined" if self.dialect.at_least("0.5.2")
                   else "NotImplementedError")
            )
            self.wake.set()
        # ROUND_ROBIN, and a room-routed request without a room: SGLang 0.5.7+ give such a
        # request (fake transfer backend) the counter as its room; older releases assert.
        rank = self.rr % n
        self.rr += 1
        return rank

    @staticmethod
    def _held(rank: RankState) -> int:
        return len(rank.running) + len(rank.queue) + rank.transfer + len(rank.waiting)

    @staticmethod
    def _held_tokens(rank: RankState) -> int:
        return (rank.token_sum + rank.transfer_tokens
                + sum(r.prompt_tokens for r in rank.queue)
                + sum(r.prefill_left for r in rank.waiting))

    def submit_prefill(self, req: Req) -> None:
        """A prompt to prefill (prefill server, or a plain server's new request)."""
        rank = self._pick_rank(req)
        req.dp = rank.dp
        rank.waiting.append(req)
        self.wake.set()

    def submit_decode(
        self,
        req: Req,
        wait: Callable[[Callable[[], None]], Callable[[], None]] | None,
        timeout_s: float,
    ) -> None:
        """A PD decode request; ``wait(on_ready)`` waits for its room (None: no transfer)."""
        rank = self._pick_rank(req)
        req.dp = rank.dp
        req.prefill_left = 0
        if wait is None:
            rank.queue.append(req)
            self.wake.set()
            return
        rank.transfer += 1
        rank.transfer_tokens += req.prompt_tokens
        loop = asyncio.get_running_loop()
        state = {"done": False}

        def ready() -> None:
            if state["done"]:
                return
            state["done"] = True
            timer.cancel()
            rank.transfer -= 1
            rank.transfer_tokens -= req.prompt_tokens
            if not req.aborted:
                rank.queue.append(req)
                self.wake.set()

        def expire() -> None:
            if state["done"]:
                return
            state["done"] = True
            if req.cancel_wait:
                req.cancel_wait()
            rank.transfer -= 1
            rank.transfer_tokens -= req.prompt_tokens
            if not req.aborted:
                self.emit(
                    [
                        (
                            t,
                            f"Decode transfer failed for request rank={rank.dp} rid={req.rid} "
                            f"with exception KVTransferError(bootstrap room not ready after "
                            f"{timeout_s:.0f} s)",
                        )
                        for t in self._tp_of_dp(rank.dp)
                    ]
                )
                req.aborted = True
                req.call.fail(
                    req,
                    f"KV transfer timed out after {timeout_s:.0f} s "
                    "(SGLANG_DISAGGREGATION_WAITING_TIMEOUT)",
                )
                req.call.flush()

        timer = loop.call_later(timeout_s, expire)
        req.cancel_wait = wait(ready)

    def abort(self, req: Req) -> None:
        """The client went away: the request leaves wherever it is at the next step."""
        req.aborted = True
        self.wake.set()

    def _tp_of_dp(self, dp: int) -> list[int]:
        a = self.cfg.attn_tp
        return list(range(dp * a, dp * a + a))

    # ------------------------------------------------------------------ controls

    async def control(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` in the scheduler between forwards; return its result."""
        fut = asyncio.get_running_loop().create_future()
        self.controls.append((fn, fut))
        self.wake.set()
        return await fut

    async def _run_controls(self) -> None:
        while self.controls:
            fn, fut = self.controls.popleft()
            try:
                result = fn()
                if asyncio.iscoroutine(result):
                    result = await result
            except (ControlError, RecorderError) as exc:
                if not fut.done():
                    fut.set_exception(exc)
                continue
            if not fut.done():
                fut.set_result(result)

    def set_slow_down(self, seconds: float | None) -> None:
        self.sleep_s = seconds if seconds is not None and seconds > 0 else None

    def pending_counts(self) -> tuple[int, int]:
        queued = sum(len(r.queue) + len(r.waiting) + r.transfer for r in self.ranks)
        running = sum(len(r.running) for r in self.ranks)
        return queued, running

    def flush_cache(self) -> bool:
        queued, running = self.pending_counts()
        if queued or running:
            self.emit(
                [
                    (
                        t,
                        "Cache not flushed because there are pending requests. "
                        f"#queue-req: {queued}, #running-req: {running}",
                    )
                    for t in self.all_tp
                ]
            )
            return False
        self.emit([(t, "Cache flushed successfully!") for t in self.all_tp])
        return True

    def start_profile(self, body: dict) -> str:
        keys = self.dialect.profile_keys()
        body = {k: v for k, v in body.items() if k in keys}  # a release ignores the others
        if self.profile is not None:
            raise ControlError("Profiling is already in progress. Call /stop_profile first.")
        num_steps = body.get("num_steps")
        start_step = body.get("start_step")
        num_steps = int(num_steps) if num_steps is not None else None
        # SGLang tests both for truth: 0 means "not given".
        start_step = int(start_step) if start_step else None
        env = os.environ
        with_stack = body.get("with_stack")
        if with_stack is None:
            with_stack = env.get("SGLANG_PROFILE_WITH_STACK", "true").lower() not in ("0", "false")
        record_shapes = body.get("record_shapes")
        if record_shapes is None:
            record_shapes = env.get("SGLANG_PROFILE_RECORD_SHAPES", "true").lower() not in (
                "0",
                "false",
            )
        activities = body.get("activities") or ["CPU", "GPU"]
        by_stage = bool(body.get("profile_by_stage"))
        profile_id = body.get("profile_id")
        profile_id = str(profile_id) if profile_id not in (None, "") else str(time.time())
        stage = None
        if by_stage:
            stage = "EXTEND" if self.mode == "prefill" else "DECODE"
            if self.mode == "decode" and self.dialect.by_stage_crashes_on_pd_decode:
                self.pending_crash = "RuntimeError: unsupported profile stage: ForwardMode.PREBUILT"
        f = self.forward_ct
        if by_stage:
            # By stage, start_step is not used: the capture starts at the stage's next batch
            # (_profile_hook) and stops after num_steps batches of it.
            start_ct, stop_ct = f + 1, None
        elif start_step is not None:
            start_ct = max(start_step, f + 1)
            stop_ct = start_ct + num_steps if num_steps else None
        else:
            start_ct = f + 1
            if num_steps:
                stop_ct = f + self.dialect.captured_steps(num_steps, False) + 1
            else:
                stop_ct = None
        output_dir = body.get("output_dir")
        self.profile = ProfileState(
            profile_id=profile_id,
            output_dir=output_dir,
            num_steps=num_steps,
            start_ct=start_ct,
            stop_ct=stop_ct,
            activities=[str(a) for a in activities],
            with_stack=bool(with_stack),
            record_shapes=bool(record_shapes),
            by_stage=by_stage,
            stage=stage,
            prefix=body.get("profile_prefix"),
            merge=bool(body.get("merge_profiles")),
        )
        if start_step is None and not by_stage:
            self._activate_profile()
        return profile_id

    def _meta(self, prof: ProfileState) -> dict:
        return {
            "profile_id": prof.profile_id,
            "output_dir": prof.output_dir,
            "activities": prof.activities,
            "with_stack": prof.with_stack,
            "record_shapes": prof.record_shapes,
            "by_stage": prof.by_stage,
            "stage": prof.stage,
            "prefix": prof.prefix,
        }

    def _activate_profile(self) -> None:
        prof = self.profile
        assert prof is not None
        prof.active = True
        shown_stage = prof.stage if prof.by_stage else None
        local_dir = default_profile_dir(prof.output_dir)
        self.emit(
            [
                (t, self.dialect.profile_start_line(local_dir, prof.profile_id, shown_stage))
                for t in self.cfg.local_tp_ranks(0)
            ]
        )
        if self.remote_profile is not None:
            self.remote_profile("start", self._meta(prof), None)

    async def stop_profile(self) -> None:
        if self.profile is None:
            raise ControlError("Profiling is not in progress. Call /start_profile first.")
        await self._finish_profile()

    async def _finish_profile(self) -> None:
        prof = self.profile
        self.profile = None
        if prof is None:
            return
        if not prof.active:  # armed with start_step, never started
            return
        stage = prof.stage if prof.by_stage else None
        self.emit([(t, self.dialect.profile_stop_line(stage)) for t in self.cfg.local_tp_ranks(0)])
        meta = self._meta(prof)
        steps = prof.steps
        loop = asyncio.get_running_loop()
        remote = None
        if self.remote_profile is not None:
            remote = self.remote_profile("stop", meta, steps)
        await loop.run_in_executor(None, export_traces, self.cfg, 0, meta, steps)
        if remote is not None:
            await remote
        local_dir = default_profile_dir(prof.output_dir)
        merge_message = ""
        if prof.merge:
            # Rank TP0 (DP0, EP0) merges after the barrier that follows every rank's export.
            path, events, files = await loop.run_in_executor(
                None, write_merged, local_dir, prof.profile_id
            )
            merge_message = (
                f" Merged trace: {path} (Events: {events}, Files: {files})" if files
                else f" Merge failed: No trace files found for profile_id: {prof.profile_id}"
            )
        self.emit(
            [
                (t, self.dialect.profile_done_line(local_dir, merge_message if t == 0 else ""))
                for t in self.cfg.local_tp_ranks(0)
            ]
        )
        truth = {
            "profile_id": prof.profile_id,
            "model": self.model_description(),
            "steps": [
                {
                    "forward_ct": s["ct"],
                    "kind": s["kind"],
                    "start_us": round(s["t0"] * 1e6, 3),
                    "sleep_ms": round(s["sleep"] * 1e3, 6),
                    "forward_ms": round(s["fwd"] * 1e3, 6),
                    "batch": s["bs"],
                }
                for s in steps
            ],
        }
        self.log(
            "emulator ground truth (test double, not a measurement): "
            + json.dumps(truth, separators=(",", ":"))
        )

    # ------------------------------------------------------------------ health

    async def wait_step(self, timeout: float) -> bool:
        """True once a forward completes (or at once while idle); False after ``timeout``."""
        if self.idle and not self.controls:
            return True
        fut = asyncio.get_running_loop().create_future()
        self.step_waiters.append(fut)
        try:
            await asyncio.wait_for(fut, timeout)
            return True
        except asyncio.TimeoutError:
            return False

    # ------------------------------------------------------------------ the loop

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        prev_end: float | None = None
        while True:
            self.wake.clear()
            await self._run_controls()
            plan = self._plan()
            if plan is None:
                self.idle = True
                self._notify_step()
                await self.wake.wait()
                continue
            self.idle = False
            self.forward_ct += 1
            if self.pending_crash and self.fatal is not None:
                self.fatal(self.pending_crash)
                return
            await self._profile_hook(plan)
            now = loop.time()
            expected = self.decode_step_s(max(plan.bs)) if plan.kind == "DECODE" else 0.0
            slack = max(0.05, expected)
            if prev_end is not None and 0 <= now - prev_end < slack:
                t0 = prev_end
            else:
                t0 = now
            sleep = self.sleep_s or 0.0
            if sleep > 0:
                self.emit([(t, f"Scheduler.run_batch sleep {sleep}s") for t in self.all_tp])
            fwd = self._forward_s(plan)
            end = t0 + sleep + fwd
            delay = end - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            prev_end = end
            self._complete(plan, t0, sleep, fwd, end)

    def _notify_step(self) -> None:
        if self.step_waiters:
            waiters, self.step_waiters = self.step_waiters, []
            for fut in waiters:
                if not fut.done():
                    fut.set_result(True)

    def _forward_s(self, plan: Plan) -> float:
        if plan.kind == "DECODE":
            s = self.decode_step_s(max(plan.bs))
        else:
            s = sum(plan.toks) / self.knobs.prefill_tokens_per_s
        if self.profile is not None and self.profile.active:
            s *= 1.0 + self.knobs.profile_overhead
        return s

    async def _profile_hook(self, plan: Plan) -> None:
        prof = self.profile
        if prof is None:
            return
        if not prof.active and self.forward_ct >= prof.start_ct and (
            not prof.by_stage or plan.kind == prof.stage
        ):
            self._activate_profile()
        if prof.active and prof.stop_ct is not None and self.forward_ct >= prof.stop_ct:
            await self._finish_profile()
            return
        if prof.active and prof.by_stage and prof.num_steps and plan.kind == prof.stage:
            if prof.stage_count >= prof.num_steps:
                await self._finish_profile()

    def _sweep(self, rank: RankState) -> None:
        if any(r.aborted for r in rank.queue):
            rank.queue = deque(r for r in rank.queue if not r.aborted)
        if any(r.aborted for r in rank.waiting):
            rank.waiting = deque(r for r in rank.waiting if not r.aborted)
        for req in [r for r in rank.running if r.aborted]:
            self._leave(rank, req)

    def _leave(self, rank: RankState, req: Req) -> None:
        if req in rank.running:
            rank.token_sum -= req.prompt_tokens + req.generated(rank)
            del rank.running[req]
            rank.streaming.pop(req, None)

    def _join(self, rank: RankState, req: Req, gen0: int) -> None:
        """``req`` joins the running batch having generated ``gen0`` tokens."""
        req.gen0 = gen0
        req.step0 = rank.decode_steps
        if gen0 >= req.max_new:
            self._finish(rank, req, in_batch=False)
            return
        if gen0 > 0:
            req.call.progress(req)
            self.touched.add(req.call)
        rank.running[req] = None
        if req.stream:
            rank.streaming[req] = None
        rank.token_sum += req.prompt_tokens + gen0
        heapq.heappush(rank.finish_heap, (req.step0 + req.max_new - gen0, next(self.seq), req))

    def _finish(self, rank: RankState, req: Req, in_batch: bool) -> None:
        if in_batch:
            self._leave(rank, req)
        req.finished = True
        req.finish_time = time.monotonic()
        req.call.finish(req)
        self.touched.add(req.call)

    def _plan(self) -> Plan | None:
        n = len(self.ranks)
        for rank in self.ranks:
            self._sweep(rank)
        if self.mode == "decode":
            for rank in self.ranks:
                while rank.queue and len(rank.running) < self.cap_eff:
                    self._join(rank, rank.queue.popleft(), 1)
            self._flush_touched()
            bs = [len(r.running) for r in self.ranks]
            return Plan("DECODE", bs, [0] * n) if any(bs) else None
        # prefill / plain: prefill first where a prompt waits and (plain) a slot is free
        extend: list[list[tuple[Req, int]]] = [[] for _ in range(n)]
        any_extend = False
        for rank in self.ranks:
            budget = self.cfg.chunk_per_rank
            slots = (self.cap_eff - len(rank.running)) if self.mode == "plain" else 1 << 30
            for req in rank.waiting:
                if budget <= 0 or slots <= 0:
                    break
                take = min(req.prefill_left, budget)
                extend[rank.dp].append((req, take))
                budget -= take
                slots -= 1
                any_extend = True
        if any_extend:
            return Plan(
                "EXTEND", [len(e) for e in extend], [sum(t for _r, t in e) for e in extend], extend
            )
        if self.mode == "plain":
            bs = [len(r.running) for r in self.ranks]
            if any(bs):
                return Plan("DECODE", bs, [0] * n)
        return None

    def _flush_touched(self) -> None:
        if self.touched:
            calls, self.touched = self.touched, set()
            for call in calls:
                call.flush()

    def _complete(self, plan: Plan, t0: float, sleep: float, fwd: float, end: float) -> None:
        prof = self.profile
        if prof is not None and prof.active:
            if not prof.by_stage or plan.kind == prof.stage:
                prof.steps.append(
                    {
                        "ct": self.forward_ct,
                        "t0": t0,
                        "sleep": sleep,
                        "fwd": fwd,
                        "kind": plan.kind,
                        "bs": list(plan.bs),
                        "toks": list(plan.toks),
                    }
                )
                prof.stage_count += 1
        if plan.kind == "DECODE":
            self._complete_decode(plan, end)
            self.recorder.record(sum(plan.bs))
        else:
            self._complete_extend(plan, end)
            self.recorder.record(sum(plan.toks))
        self._eplb_pass_end()
        self._flush_touched()
        self.last_output = time.monotonic()
        self._notify_step()

    def _complete_decode(self, plan: Plan, end: float) -> None:
        lines: list[tuple[int, str]] = []
        interval = self.cfg.ns.decode_log_interval
        pd = self.mode == "decode"
        for rank in self.ranks:
            bs = plan.bs[rank.dp]
            if bs == 0:
                continue
            rank.decode_steps += 1
            rank.token_sum += len(rank.running)
            rank.tokens_since_line += bs
            heap = rank.finish_heap
            finishing = []
            while heap and heap[0][0] <= rank.decode_steps:
                _step, _seq, req = heapq.heappop(heap)
                if req in rank.running:
                    finishing.append(req)
            if rank.streaming:
                done = set(finishing)
                for req in rank.streaming:
                    if req not in done:
                        req.call.progress(req)
                        self.touched.add(req.call)
            for req in finishing:
                self._finish(rank, req, in_batch=True)
            rank.decode_lines_ct += 1
            if rank.decode_lines_ct % interval:
                continue
            since = rank.last_line_t if rank.last_line_t is not None else self.started
            elapsed = max(end - since, 1e-9)
            gen = rank.tokens_since_line / elapsed
            rank.last_gen_throughput = gen
            rank.tokens_since_line = 0
            rank.last_line_t = end
            cap = self.cfg.token_capacity
            msg = self.dialect.decode_line(
                running=bs,
                tokens=rank.token_sum,
                token_usage=rank.token_sum / cap,
                gen_throughput=gen,
                queue=len(rank.queue),
                cuda_graph=bs <= self.cfg.cuda_graph_max_bs,
                pd_decode=pd,
                prealloc_usage=rank.transfer_tokens / cap,
                prealloc=0,
                transfer=rank.transfer,
                retracted=0,
                iteration=self.forward_ct,
                log_iters=os.environ.get("SGLANG_LOG_FORWARD_ITERS", "") == "1",
            )
            lines.extend((t, msg) for t in self._tp_of_dp(rank.dp)[:1])
        if lines:
            self.emit(lines)

    def _complete_extend(self, plan: Plan, end: float) -> None:
        assert plan.extend is not None
        lines: list[tuple[int, str]] = []
        done_prefill: list[Req] = []
        cap = self.cfg.token_capacity
        for rank in self.ranks:
            items = plan.extend[rank.dp]
            if not items:
                continue
            new_tokens = 0
            for req, take in items:
                req.prefill_left -= take
                new_tokens += take
                if req.prefill_left <= 0:
                    if rank.waiting and rank.waiting[0] is req:
                        rank.waiting.popleft()  # prompts are taken in order from the front
                    else:
                        rank.waiting.remove(req)
                    if self.mode == "plain":
                        self._join(rank, req, 1)
                    else:
                        req.gen0 = 1
                        req.finished = True
                        req.call.finish(req)
                        self.touched.add(req.call)
                        done_prefill.append(req)
            rank.prefill_tokens_since += new_tokens
            since = rank.last_prefill_t if rank.last_prefill_t is not None else self.started
            tput = rank.prefill_tokens_since / max(end - since, 1e-9)
            rank.prefill_tokens_since = 0
            rank.last_prefill_t = end
            rank.last_input_throughput = tput
            pending = sum(r.prefill_left for r in rank.waiting)
            msg = self.dialect.prefill_line(
                new_seq=len(items),
                new_token=new_tokens,
                cached_token=0,
                token_usage=rank.token_sum / cap,
                running=len(rank.running),
                queue=len(rank.waiting),
                input_throughput=tput,
                pd_prefill=self.mode == "prefill",
                pending_token=pending,
                iteration=self.forward_ct,
                log_iters=os.environ.get("SGLANG_LOG_FORWARD_ITERS", "") == "1",
            )
            lines.extend((t, msg) for t in self._tp_of_dp(rank.dp)[:1])
        if lines:
            self.emit(lines)
        if done_prefill and self.on_prefilled is not None:
            self.on_prefilled(done_prefill)
