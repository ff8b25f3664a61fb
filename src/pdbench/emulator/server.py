"""Entry point: one emulated SGLang server node (``python -m pdbench.emulator …``).

Node 0 serves SGLang's HTTP API on ``--host``/``--port`` and runs the scheduler model of all
DP ranks; a PD prefill server's node 0 also serves the bootstrap port. Nodes >= 1 serve
``/health``, ``/health_generate`` and ``/ping`` (200) on their own ``--port`` and print what
node 0 streams them for their ranks. See docs/emulator.md for the API as emulated.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
import traceback
from collections import defaultdict
from typing import Any

from . import httpd
from .args import ServerConfig, StartupError, UsageError, parse_args
from .cluster import Hub, Link
from .experts import ExpertRecorder, RecorderError, check_init_expert_location
from .logfmt import LogWriter
from .scheduler import (
    Call,
    ControlError,
    Engine,
    Req,
    default_profile_dir,
    export_traces,
    new_rid,
)
from .transfer import FAKE_BOOTSTRAP_HOST, RoomBoard, RoomWatcher, room_key

NOTICE = (
    "pdbench emulator: a test double for rehearsals and tests, not SGLang; "
    "nothing it prints is a measurement"
)

_LOREM = (
    "the quick brown fox jumps over the lazy dog and keeps running through the field "
    "while the emulated decoder writes one character per token "
)


def token_text(n: int) -> str:
    """The emulator's output text: one character per generated token."""
    global _LOREM
    while len(_LOREM) < n:
        _LOREM = _LOREM * 2
    return _LOREM[:n]


def prompt_len(item: Any) -> int:
    if isinstance(item, str):
        return max(1, round(len(item) / 4))
    if isinstance(item, list):
        return max(1, len(item))
    return 1


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


def read_model_config(model_path: str) -> dict:
    try:
        with open(os.path.join(model_path, "config.json"), encoding="utf-8") as f:
            cfg = json.load(f)
        return cfg if isinstance(cfg, dict) else {}
    except (OSError, ValueError):
        return {}


# --------------------------------------------------------------------------- calls


class WarmupCall(Call):
    def __init__(self, n: int) -> None:
        self.remaining = n
        self.done = asyncio.get_running_loop().create_future()

    def finish(self, req: Req) -> None:
        self.remaining -= 1
        if self.remaining <= 0 and not self.done.done():
            self.done.set_result(True)

    fail = finish  # type: ignore[assignment]


class GenerateCall(Call):
    """One ``/generate`` or ``/v1/completions`` request (possibly a batch of prompts)."""

    def __init__(
        self,
        server: NodeZero,
        n: int,
        *,
        stream: bool,
        batch: bool,
        openai: bool,
        include_usage: bool = False,
        echo_ids: bool = False,
    ) -> None:
        self.server = server
        self.stream = stream
        self.batch = batch
        self.openai = openai
        self.include_usage = include_usage
        self.echo_ids = echo_ids
        self.reqs: list[Req] = []
        self.remaining = n
        self.pending: list[bytes] = []
        self.sink: httpd.ChunkSink | None = None
        self.done = asyncio.get_running_loop().create_future()
        self.t0 = time.monotonic()
        self.created = int(time.time())
        self.sent: dict[int, int] = {}
        self.failed: dict[int, str] = {}
        self.cid = "cmpl-" + new_rid()
        self.intervals = [1] * n

    # -- what the scheduler calls
    def _count(self, req: Req) -> int:
        if req.finished:
            return req.max_new if self.server.cfg.mode != "prefill" else 1
        rank = self.server.engine.ranks[req.dp]
        return req.generated(rank)

    def _finish_reason(self, req: Req, n: int) -> Any:
        if req.index in self.failed:
            return {"type": "abort", "message": self.failed[req.index]}
        return {"type": "length", "length": n} if req.finished else None

    def progress(self, req: Req) -> None:
        if self.stream:
            n = self._count(req)
            if n % self.intervals[req.index] == 0:
                self.pending.append(self._chunk(req, n))

    def finish(self, req: Req) -> None:
        self.remaining -= 1
        if self.stream:
            self.pending.append(self._chunk(req, self._count(req)))

    def fail(self, req: Req, message: str) -> None:
        self.failed[req.index] = message
        self.remaining -= 1
        if self.stream:
            self.pending.append(self._chunk(req, self._count(req)))

    def flush(self) -> None:
        if self.stream:
            if self.sink is None:
                return
            if self.pending:
                data = b"".join(self.pending)
                self.pending.clear()
                if not self.sink.write(data):
                    self._client_gone()
                    return
        if self.remaining <= 0 and not self.done.done():
            self.done.set_result(True)

    def _client_gone(self) -> None:
        for req in self.reqs:
            if not req.finished:
                self.server.engine.abort(req)
        if not self.done.done():
            self.done.set_result(False)

    # -- output
    def _meta(self, req: Req, n: int) -> dict:
        return {
            "id": req.rid,
            "finish_reason": self._finish_reason(req, n),
            "prompt_tokens": req.prompt_tokens,
            "weight_version": "default",
            "completion_tokens": n,
            "cached_tokens": 0,
            "e2e_latency": round(time.monotonic() - self.t0, 4),
        }

    def _chunk(self, req: Req, n: int) -> bytes:
        if self.openai:
            last = self.sent.get(req.index, 0)
            self.sent[req.index] = n
            fr = self._finish_reason(req, n)
            obj = {
                "id": self.cid,
                "object": "text_completion",
                "created": self.created,
                "model": self.server.cfg.served_model_name,
                "choices": [
                    {
                        "index": req.index,
                        "text": token_text(n)[last:],
                        "logprobs": None,
                        "finish_reason": fr["type"] if fr else None,
                        "matched_stop": None,
                    }
                ],
                "usage": None,
            }
            return b"data: " + json.dumps(obj, separators=(", ", ": ")).encode() + b"\n\n"
        # The hot path of a streaming decode: formatted by hand (the text is ASCII and the
        # id hexadecimal, so nothing needs escaping).
        if req.finished or req.index in self.failed:
            reason = json.dumps(self._finish_reason(req, n))
        else:
            reason = "null"
        index = f', "index": {req.index}' if self.batch else ""
        return (
            f'data: {{"text": "{token_text(n)}", "meta_info": {{"id": {json.dumps(req.rid)}, '
            f'"finish_reason": {reason}, "prompt_tokens": {req.prompt_tokens}, '
            f'"weight_version": "default", "completion_tokens": {n}, "cached_tokens": 0, '
            f'"e2e_latency": {time.monotonic() - self.t0:.4f}}}{index}}}\n\n'
        ).encode()

    def result(self) -> Any:
        if self.openai:
            choices, prompt, completion = [], 0, 0
            for req in self.reqs:
                n = self._count(req)
                fr = self._finish_reason(req, n)
                choices.append(
                    {
                        "index": req.index,
                        "text": token_text(n),
                        "logprobs": None,
                        "finish_reason": fr["type"] if fr else None,
                        "matched_stop": None,
                    }
                )
                prompt += req.prompt_tokens
                completion += n
            return {
                "id": self.cid,
                "object": "text_completion",
                "created": self.created,
                "model": self.server.cfg.served_model_name,
                "choices": choices,
                "usage": {
                    "prompt_tokens": prompt,
                    "completion_tokens": completion,
                    "total_tokens": prompt + completion,
                    "prompt_tokens_details": None,
                },
            }
        out = []
        for req in self.reqs:
            n = self._count(req)
            item: dict[str, Any] = {"text": token_text(n)}
            if self.echo_ids:
                item["output_ids"] = [(7 * i + 5) % 16384 for i in range(n)]
            item["meta_info"] = self._meta(req, n)
            out.append(item)
        return out if self.batch else out[0]

    async def run_stream(self, sink: httpd.ChunkSink) -> None:
        self.sink = sink
        self.flush()
        await self.done
        if sink.closed:
            return
        if self.openai and self.include_usage:
            prompt = sum(r.prompt_tokens for r in self.reqs)
            completion = sum(self._count(r) for r in self.reqs)
            usage = {
                "id": self.cid,
                "object": "text_completion",
                "created": self.created,
                "model": self.server.cfg.served_model_name,
                "choices": [],
                "usage": {
                    "prompt_tokens": prompt,
                    "completion_tokens": completion,
                    "total_tokens": prompt + completion,
                },
            }
            sink.write(b"data: " + json.dumps(usage).encode() + b"\n\n")
        sink.write(b"data: [DONE]\n\n")
        await sink.drain()


# --------------------------------------------------------------------------- node 0


RECORDER_RESET = "Resetting ExpertDistributionRecorder..."


class RequestRefused(httpd.HTTPError):
    """A request SGLang's tokenizer manager refuses (a ValueError there): 400, or for a
    streamed /generate one error event."""


async def _stream_error(sink: httpd.ChunkSink, message: str, detail: bool) -> None:
    error: dict[str, Any] = {"message": message}
    if detail:
        error.update(type="invalid_request_error", code=400, retryable=False)
    sink.write(b"data: " + json.dumps({"error": error}).encode() + b"\n\n")
    sink.write(b"data: [DONE]\n\n")
    await sink.drain()


def _listify(value: Any, n: int, name: str) -> list:
    if isinstance(value, list):
        if len(value) != n:
            raise httpd.HTTPError(400, f"{name} has {len(value)} entries for a batch of {n}")
        return value
    return [value] * n


class NodeZero:
    def __init__(self, cfg: ServerConfig, log: LogWriter, exit_future: asyncio.Future) -> None:
        self.cfg = cfg
        self.log = log
        self.exit_future = exit_future
        self.ready = False
        self.shutting_down = False
        self.started_at = time.time()
        self.model_cfg = read_model_config(cfg.model_path)
        self.prefixes = {t: cfg.prefix_of(t) for t in range(cfg.tp)}
        self.eplb = check_init_expert_location(cfg.ns.init_expert_location)
        mode = cfg.ns.expert_distribution_recorder_mode
        if mode is None and cfg.ns.enable_eplb:
            mode = "stat"
        self.recorder = ExpertRecorder(
            mode, cfg.ns.expert_distribution_recorder_buffer_size, cfg.model_path
        )
        if cfg.ns.enable_eplb:  # EPLBManager starts the recorder itself
            self.recorder.start()
        self.hub = (
            Hub("0.0.0.0", cfg.dist_addr()[1], cfg.nnodes, self._lost_peer, self.info)
            if cfg.nnodes > 1
            else None
        )
        self.board = RoomBoard(self._describe_prefill) if cfg.mode == "prefill" else None
        self.watcher = RoomWatcher(self.info) if cfg.mode == "decode" else None
        self.engine = Engine(
            cfg,
            emit=self.emit,
            log=self.info,
            recorder=self.recorder,
            eplb=self.eplb,
            on_prefilled=self._prefilled if cfg.mode == "prefill" else None,
            remote_profile=self._remote_profile if cfg.nnodes > 1 else None,
            fatal=self.fatal,
        )
        self.waiting_timeout = _env_float("SGLANG_DISAGGREGATION_WAITING_TIMEOUT", 300.0)

    # -- log routing
    def info(self, message: str) -> None:
        self.log.line(message)

    def emit(self, items: list[tuple[int, str]]) -> None:
        local = []
        remote: dict[int, list] = defaultdict(list)
        gpn = self.cfg.gpus_per_node
        for tp, message in items:
            node = tp // gpn
            if node == 0:
                local.append((self.prefixes[tp], message))
            else:
                remote[node].append([self.prefixes[tp], message])
        if local:
            self.log.lines(local)
        if self.hub is not None:
            for node, lines in remote.items():
                self.hub.send(node, {"t": "L", "l": lines})

    def _rank0_prefix(self) -> str:
        return self.prefixes[0]

    # -- failures
    def _exit(self, code: int) -> None:
        if not self.exit_future.done():
            self.exit_future.set_result(code)

    def fatal(self, message: str) -> None:
        self.log.line(
            "Scheduler hit an exception: Traceback (most recent call last):", self._rank0_prefix()
        )
        self.log.raw('  File "pdbench/emulator/scheduler.py", in run')
        self.log.raw(message)
        self.log.line("Received sigquit from a child process. It usually means the child failed.")
        if self.hub is not None:
            for node in list(self.hub.peers):
                self.hub.send(node, {"t": "fatal", "msg": f"node 0 failed: {message}"})
        self._exit(1)

    def _lost_peer(self, node_rank: int, address: str, reason: str) -> None:
        if self.shutting_down:
            return
        self.fatal(
            f"RuntimeError: lost node rank {node_rank} ({address}) of "
            f"{self.cfg.nnodes} nodes: {reason} (NCCL communicator aborted)"
        )

    # -- PD
    def _describe_prefill(self) -> dict:
        return {
            "prefill_dp_size": self.cfg.dp,
            "prefill_tp_size": self.cfg.tp,
            "prefill_pp_size": 1,
            "disaggregation_mode": "prefill",
            "emulator": True,
        }

    def _prefilled(self, reqs: list[Req]) -> None:
        assert self.board is not None
        self.board.mark_ready([r.room for r in reqs if r.room is not None])

    # -- profiling on peers
    def _remote_profile(self, what: str, meta: dict, steps: list[dict] | None):
        assert self.hub is not None
        if what == "start":
            for node in range(1, self.cfg.nnodes):
                self.hub.send(node, {"t": "pstart", "meta": meta})
            return None
        waits = [
            self.hub.request(
                node,
                {"t": "pstop", "meta": meta, "steps": steps},
                f"{meta['profile_id']}:{node}",
                300,
            )
            for node in range(1, self.cfg.nnodes)
        ]
        return asyncio.gather(*waits)

    # -- startup
    async def start(self) -> None:
        cfg = self.cfg
        self.http = await httpd.serve(cfg.ns.host, cfg.ns.port, self.handle, self._access)
        self.log.line(f"INFO:     Started server process [{os.getpid()}]")
        self.log.line("INFO:     Waiting for application startup.")
        self.log.line("INFO:     Application startup complete.")
        self.log.line(
            f"INFO:     Uvicorn running on http://{cfg.ns.host}:{cfg.ns.port} "
            "(Press CTRL+C to quit)"
        )
        if self.board is not None:
            await self.board.start(cfg.ns.disaggregation_bootstrap_port)
        if self.hub is not None:
            await self.hub.start()
        local = cfg.local_tp_ranks(0)
        self.log.lines([(self.prefixes[t], "Init torch distributed begin.") for t in local])
        if self.hub is not None:
            try:
                await asyncio.wait_for(self.hub.all_connected.wait(), cfg.knobs.dist_timeout_s)
            except asyncio.TimeoutError:
                missing = sorted(set(range(1, cfg.nnodes)) - set(self.hub.peers))
                self.fatal(
                    f"RuntimeError: timed out after {cfg.knobs.dist_timeout_s:.0f} s "
                    f"waiting for node ranks {missing} at {cfg.ns.dist_init_addr}"
                )
                return
        self.log.lines(
            [(self.prefixes[t], "Init torch distributed ends. mem usage=0.00 GB") for t in local]
        )
        if self.eplb == "static":
            self.log.lines(
                [
                    (
                        self.prefixes[t],
                        "init_expert_location from init_by_eplb using "
                        "ServerArgs.init_expert_location",
                    )
                    for t in local
                ]
            )
        await asyncio.sleep(cfg.knobs.warmup_s)
        arch = (self.model_cfg.get("architectures") or ["DeepseekV3ForCausalLM"])[0]
        self.log.lines(
            [
                (
                    self.prefixes[t],
                    f"Load weight end. type={arch}, dtype=torch.bfloat16, "
                    "avail mem=0.00 GB, mem usage=0.00 GB.",
                )
                for t in local
            ]
        )
        self.log.lines(
            [
                (
                    self.prefixes[t],
                    f"max_total_num_tokens={cfg.token_capacity}, "
                    f"chunked_prefill_size={cfg.chunked_prefill_size}, max_prefill_tokens="
                    f"16384, max_running_requests={cfg.cap_per_rank}, context_len="
                    f"{self.context_len()}",
                )
                for t in local
            ]
        )
        self.engine_task = asyncio.ensure_future(self.engine.run())
        self.engine_task.add_done_callback(self._engine_done)
        if not cfg.ns.skip_server_warmup:
            await self.warmup()
        self.ready = True
        self.log.line("The server is fired up and ready to roll!")

    def _engine_done(self, task: asyncio.Task) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            lines = traceback.format_exception(type(exc), exc, exc.__traceback__)
            self.fatal("".join(lines).rstrip())

    async def warmup(self) -> None:
        cfg = self.cfg
        if cfg.mode == "decode":
            self.log.line("Start of pd disaggregation warmup ...")
            call = WarmupCall(cfg.dp)
            for d in range(cfg.dp):
                req = Req(call, d, 4, 8, routed_dp=d)
                self.engine.submit_decode(req, None, self.waiting_timeout)
            await call.done
            self.log.line(f"Disaggregation warmup requests completed for all {cfg.dp} DP ranks")
            self.log.line("End of disaggregation warmup")
        elif cfg.mode == "prefill":
            call = WarmupCall(cfg.dp)
            for d in range(cfg.dp):
                self.engine.submit_prefill(Req(call, d, 4, 1, routed_dp=d))
            await call.done
        else:
            call = WarmupCall(1)
            self.engine.submit_prefill(Req(call, 0, 7, 8, routed_dp=0))
            await call.done

    def context_len(self) -> int:
        return int(
            self.cfg.ns.context_length or self.model_cfg.get("max_position_embeddings") or 163840
        )

    async def stop(self) -> None:
        self.shutting_down = True
        if self.hub is not None:
            await self.hub.close()

    # -- HTTP
    def _access(self, text: str) -> None:
        self.log.line(f"INFO:     {text}")

    async def handle(self, req: httpd.Request):
        path = req.path.rstrip("/") or "/"
        handler = self.routes.get(path)
        if handler is None or (
            path in ("/server_info", "/model_info") and not self.cfg.dialect.has_server_info
        ):
            return httpd.json_response({"detail": "Not Found"}, 404)
        renamed = {"/get_model_info": "/model_info", "/get_server_info": "/server_info"}
        if path == "/get_load" and self.cfg.dialect.has_get_load:
            renamed[path] = "/v1/loads"
        if not self.cfg.dialect.has_server_info:  # the get_ spellings are the only ones
            renamed.pop("/get_model_info")
            renamed.pop("/get_server_info")
        new = renamed.get(path)
        if new is not None:
            self.log.line(
                f"Endpoint '{path}' is deprecated and will be removed in a future "
                f"version. Please use '{new}' instead."
            )
        return await handler(self, req)

    async def h_health(self, req: httpd.Request):
        if not self.ready or self.shutting_down:
            return httpd.Response(503)
        flag = os.environ.get("SGLANG_ENABLE_HEALTH_ENDPOINT_GENERATION", "true").lower()
        if (
            flag in ("0", "false") and req.path == "/health"
        ) or not self.cfg.dialect.health_generates:
            return httpd.Response(200)
        timeout = _env_float("SGLANG_HEALTH_CHECK_TIMEOUT", 20.0)
        tic = time.time()
        if await self.engine.wait_step(timeout):
            return httpd.Response(200)
        self.log.line(
            f"Health check failed. Server couldn't get a response from detokenizer for last "
            f"{timeout:.0f} seconds. tic start time: {tic:.0f}. last_heartbeat time: "
            f"{time.time() - (time.monotonic() - self.engine.last_output):.0f}"
        )
        return httpd.Response(503)

    async def h_ready(self, req: httpd.Request):
        if not self.cfg.dialect.has_ready_endpoint:
            return httpd.json_response({"detail": "Not Found"}, 404)
        return httpd.Response(200 if self.ready and not self.shutting_down else 503)

    def model_info(self) -> dict:
        cfg = self.cfg
        info = {
            "model_path": cfg.model_path,
            "tokenizer_path": cfg.ns.tokenizer_path or cfg.model_path,
            "is_generation": True,
            "preferred_sampling_params": None,
            "weight_version": "default",
            "has_image_understanding": False,
            "has_audio_understanding": False,
            "model_type": self.model_cfg.get("model_type", "deepseek_v3"),
            "architectures": self.model_cfg.get("architectures", ["DeepseekV3ForCausalLM"]),
        }
        if cfg.dialect.at_least("0.5.23"):
            info.update(
                served_model_name=cfg.served_model_name,
                load_format="auto",
                reasoning_parser=None,
                tool_call_parser=None,
                disaggregation_mode=None if cfg.mode == "plain" else cfg.mode,
            )
        return info

    async def h_model_info(self, req: httpd.Request):
        return httpd.json_response(self.model_info())

    def internal_states(self) -> list[dict]:
        cfg = self.cfg
        out = []
        for rank in self.engine.ranks:
            out.append(
                {
                    "dp_rank": rank.dp,
                    "dp_size": cfg.dp,
                    "tp_size": cfg.tp,
                    "ep_size": cfg.ep,
                    "disaggregation_mode": None if cfg.mode == "plain" else cfg.mode,
                    "max_running_requests": cfg.max_running_requests,
                    "last_gen_throughput": round(rank.last_gen_throughput, 2),
                    "memory_usage": {
                        "weight": 0.0,
                        "kvcache": 0.0,
                        "token_capacity": cfg.token_capacity,
                        "graph": 0.0,
                    },
                    "effective_max_running_requests_per_dp": cfg.cap_per_rank,
                }
            )
        return out

    async def h_server_info(self, req: httpd.Request):
        cfg = self.cfg
        info = cfg.server_args_dict()
        info.update(
            {
                "status": "ready" if self.ready else "starting",
                "max_total_num_tokens": cfg.token_capacity,
                "max_req_input_len": self.context_len() - 1,
                "internal_states": self.internal_states(),
                "version": cfg.knobs.sglang_version,
                "kv_events": None,
                "emulator": True,
                "emulator_unrecognized_args": cfg.unknown,
            }
        )
        if cfg.dialect.at_least("0.5.23"):
            info["startup_time"] = round(self.started_at, 3)
            info["frontend"] = "python"
        return httpd.json_response(info)

    async def h_models(self, req: httpd.Request):
        return httpd.json_response(
            {
                "object": "list",
                "data": [
                    {
                        "id": self.cfg.served_model_name,
                        "object": "model",
                        "created": int(self.started_at),
                        "owned_by": "sglang",
                        "root": self.cfg.model_path,
                        "parent": None,
                        "max_model_len": self.context_len(),
                    }
                ],
            }
        )

    async def h_get_load(self, req: httpd.Request):
        if not self.cfg.dialect.has_get_load:
            return httpd.json_response({"detail": "Not Found"}, 404)
        return httpd.json_response(
            [
                {
                    "dp_rank": r.dp,
                    "num_reqs": len(r.running) + len(r.queue) + r.transfer + len(r.waiting),
                    "num_waiting_reqs": len(r.queue) + r.transfer + len(r.waiting),
                    "num_tokens": r.token_sum,
                    "num_pending_tokens": sum(x.prefill_left for x in r.waiting),
                    "ts_tic": time.time(),
                }
                for r in self.engine.ranks
            ]
        )

    async def h_loads(self, req: httpd.Request):
        loads = [
            {
                "dp_rank": r.dp,
                "num_running_reqs": len(r.running),
                "num_waiting_reqs": len(r.queue) + r.transfer + len(r.waiting),
                "num_used_tokens": r.token_sum,
                "max_total_num_tokens": self.cfg.token_capacity,
                "token_usage": round(r.token_sum / self.cfg.token_capacity, 4),
                "gen_throughput": round(r.last_gen_throughput, 2),
            }
            for r in self.engine.ranks
        ]
        if "dp_rank" in req.query:
            loads = [x for x in loads if str(x["dp_rank"]) == req.query["dp_rank"]]
        return httpd.json_response(
            {"timestamp": time.time(), "version": self.cfg.knobs.sglang_version, "loads": loads}
        )

    async def h_metrics(self, req: httpd.Request):
        if not self.cfg.ns.enable_metrics:
            return httpd.json_response({"detail": "Not Found"}, 404)
        name = self.cfg.served_model_name
        lines = []
        for metric, fn in (
            ("sglang:num_running_reqs", lambda r: len(r.running)),
            ("sglang:num_queue_reqs", lambda r: len(r.queue) + len(r.waiting)),
            ("sglang:gen_throughput", lambda r: r.last_gen_throughput),
            ("sglang:num_used_tokens", lambda r: r.token_sum),
            ("sglang:token_usage", lambda r: r.token_sum / self.cfg.token_capacity),
            ("sglang:num_decode_transfer_queue_reqs", lambda r: r.transfer),
        ):
            lines.append(f"# TYPE {metric} gauge")
            for r in self.engine.ranks:
                lines.append(f'{metric}{{model_name="{name}",dp_rank="{r.dp}"}} {float(fn(r))}')
        return httpd.Response(200, "\n".join(lines) + "\n", "text/plain; version=0.0.4")

    async def h_flush_cache(self, req: httpd.Request):
        ok = await self.engine.control(self.engine.flush_cache)
        return httpd.Response(
            200 if ok else 400,
            "Cache flushed.\nPlease check backend logs for more details. (When "
            "there are running or waiting requests, the operation will not be "
            "performed.)\n",
        )

    async def h_slow_down(self, req: httpd.Request):
        body = req.json(optional=True)
        if not isinstance(body, dict) or "forward_sleep_time" not in body:
            return httpd.json_response(
                {
                    "error": {
                        "message": "Object missing required field `forward_sleep_time`",
                        "code": 400,
                    }
                },
                400,
            )
        value = body["forward_sleep_time"]
        if value is not None:
            try:
                value = float(value)
            except (TypeError, ValueError):
                return httpd.json_response(
                    {
                        "error": {
                            "message": "Expected `float | null` for `forward_sleep_time`",
                            "code": 400,
                        }
                    },
                    400,
                )
        await self.engine.control(lambda: self.engine.set_slow_down(value))
        return httpd.json_response(None)

    async def h_start_profile(self, req: httpd.Request):
        body = req.json(optional=True) or {}
        if not isinstance(body, dict):
            raise httpd.HTTPError(400, "the profile request must be a JSON object")
        try:
            await self.engine.control(lambda: self.engine.start_profile(body))
        except ControlError as exc:
            self.log.line(f"Profile request failed: {exc}")
            return httpd.Response(500, f"RuntimeError: {exc}\n")
        return httpd.Response(200, "Start profiling.\n")

    async def h_stop_profile(self, req: httpd.Request):
        try:
            await self.engine.control(self.engine.stop_profile)
        except ControlError as exc:
            self.log.line(f"Profile request failed: {exc}")
            return httpd.Response(500, f"RuntimeError: {exc}\n")
        return httpd.Response(200, "Stop profiling. This will take some time.\n")

    async def _expert(self, action: str):
        rec = self.recorder

        def run():
            # The recorder resets on start and after each dump, and says so
            # (sglang/srt/eplb/expert_distribution.py _reset; seen on 0.5.17).
            if action == "start":
                if not rec.start():
                    self.log.line(
                        "SGLang server is already recording expert ids. Did you forget "
                        "to dump the expert ids recorded so far?",
                        self._rank0_prefix(),
                    )
                self.log.line(RECORDER_RESET, self._rank0_prefix())
            elif action == "stop":
                rec.stop()
            else:
                path = rec.dump()
                self.log.line(f"Write expert distribution to {path}", self._rank0_prefix())
                self.log.line(RECORDER_RESET, self._rank0_prefix())
            return True

        try:
            await self.engine.control(run)
        except RecorderError as exc:
            self.log.line(f"Exception: {exc}", self._rank0_prefix())
            return httpd.Response(500, f"Exception: {exc}\n")
        text = {
            "start": "Start recording the expert distribution.\n",
            "stop": "Stop recording the expert distribution.\n",
            "dump": "Dump expert distribution record.\n",
        }[action]
        return httpd.Response(200, text)

    async def h_expert_start(self, req):
        return await self._expert("start")

    async def h_expert_stop(self, req):
        return await self._expert("stop")

    async def h_expert_dump(self, req):
        return await self._expert("dump")

    async def h_generate(self, req: httpd.Request):
        if req.method not in ("POST", "PUT"):
            return httpd.json_response({"detail": "Method Not Allowed"}, 405)
        body = req.json()
        if not isinstance(body, dict):
            raise httpd.HTTPError(400, "the request must be a JSON object")
        text, ids = body.get("text"), body.get("input_ids")
        if text is None and ids is None:
            raise httpd.HTTPError(400, "Either text or input_ids should be provided.")
        if text is not None:
            batch = isinstance(text, list)
            prompts = text if batch else [text]
        else:
            batch = bool(ids) and isinstance(ids[0], list)
            prompts = ids if batch else [ids]
        n = len(prompts)
        if n == 0:
            raise httpd.HTTPError(400, "empty batch")
        sp = _listify(body.get("sampling_params") or {}, n, "sampling_params")
        max_new = [
            int((p or {}).get("max_new_tokens", 128) if isinstance(p, dict) else 128) for p in sp
        ]
        call = GenerateCall(
            self,
            n,
            stream=bool(body.get("stream")),
            batch=batch,
            openai=False,
            echo_ids=ids is not None,
        )
        call.intervals = [self._stream_interval(p) for p in sp]
        try:
            self._submit(call, body, [prompt_len(p) for p in prompts], max_new)
        except RequestRefused as exc:
            # SGLang's /generate logs the refusal; streamed, it answers 200 with one error
            # event and [DONE] (what bench_serving then counts as a success), else 400.
            message, detail = exc.message, self.cfg.dialect.base.stream_error_detail
            self.log.line(self.cfg.dialect.base.request_error_log + message)
            if not call.stream:
                raise
            return httpd.StreamResponse(lambda sink: _stream_error(sink, message, detail))
        return await self._respond(call)

    async def h_completions(self, req: httpd.Request):
        if req.method != "POST":
            return httpd.json_response({"detail": "Method Not Allowed"}, 405)
        if "json" not in req.headers.get("content-type", ""):
            return httpd.json_response(
                {
                    "object": "error",
                    "message": "Content-Type must be application/json",
                    "type": "BadRequestError",
                    "code": 400,
                },
                400,
            )
        body = req.json()
        prompt = body.get("prompt")
        if prompt is None:
            raise httpd.HTTPError(400, "prompt is required")
        if isinstance(prompt, str):
            prompts = [prompt]
        elif isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
            prompts = prompt
        else:
            prompts = [prompt]
        n = len(prompts)
        max_tokens = int(body.get("max_tokens") or 16)
        opts = body.get("stream_options") or {}
        call = GenerateCall(
            self,
            n,
            stream=bool(body.get("stream")),
            batch=n > 1,
            openai=True,
            include_usage=bool(opts.get("include_usage")),
        )
        self._submit(call, body, [prompt_len(p) for p in prompts], [max_tokens] * n)
        return await self._respond(call)

    def _stream_interval(self, sampling: Any) -> int:
        value = sampling.get("stream_interval") if isinstance(sampling, dict) else None
        try:
            return max(int(value if value is not None else self.cfg.ns.stream_interval), 1)
        except (TypeError, ValueError):
            return 1

    def _check_lengths(self, plens: list[int], max_new: list[int]) -> None:
        """SGLang's tokenizer manager refuses a request whose input, or input plus
        max_new_tokens, reaches the context length (0.5.x, ``_validate_one_request``;
        without --allow-auto-truncate), with these messages."""
        limit = self.context_len()
        for plen, new in zip(plens, max_new):
            if plen >= limit:
                raise RequestRefused(400, f"The input ({plen} tokens) is longer than the "
                                           f"model's context length ({limit} tokens).")
            if plen + new >= limit:
                raise RequestRefused(
                    400,
                    "Requested token count exceeds the model's maximum context length of "
                    f"{limit} tokens. You requested a total of {plen + new} tokens: {plen} "
                    f"tokens from the input messages and {new} tokens for the completion. "
                    "Please reduce the number of tokens in the input messages or the "
                    "completion to fit within the limit.")

    def _submit(self, call: GenerateCall, body: dict, plens: list[int], max_new: list[int]) -> None:
        cfg, engine = self.cfg, self.engine
        n = len(plens)
        rids = body.get("rid")
        rids = _listify(rids, n, "rid") if rids is not None else [None] * n
        # The release's own key(s) and methods (pdbench.dialects.Dialect.routed_rank).
        routed = cfg.dialect.base.routed_rank(body, cfg.ns.load_balance_method)
        routed = _listify(routed, n, "routed_dp_rank")
        rooms = body.get("bootstrap_room")
        if isinstance(rooms, int) and n > 1:
            rooms = [rooms + i for i in range(n)]
        rooms = _listify(rooms, n, "bootstrap_room")
        stream = call.stream
        if cfg.mode == "decode":
            hosts = _listify(body.get("bootstrap_host"), n, "bootstrap_host")
            ports = _listify(body.get("bootstrap_port"), n, "bootstrap_port")
            for i in range(n):
                host = hosts[i]
                if host is not None and host != FAKE_BOOTSTRAP_HOST and rooms[i] is None:
                    raise httpd.HTTPError(400, "bootstrap_room is required with bootstrap_host")
        self._check_lengths(plens, max_new)
        reqs = []
        for i in range(n):
            r = Req(
                call,
                i,
                plens[i],
                max_new[i],
                stream=stream,
                routed_dp=routed[i] if isinstance(routed[i], int) else None,
                rid=str(rids[i]) if rids[i] is not None else None,
                room_number=rooms[i] if isinstance(rooms[i], int)
                and not isinstance(rooms[i], bool) else None,
            )
            reqs.append(r)
        call.reqs = reqs
        for i, r in enumerate(reqs):
            if cfg.mode == "decode":
                host = hosts[i]
                if host is None or host == FAKE_BOOTSTRAP_HOST:
                    engine.submit_decode(r, None, self.waiting_timeout)
                else:
                    port = int(
                        ports[i] if ports[i] is not None else cfg.ns.disaggregation_bootstrap_port
                    )
                    room = room_key(rooms[i])
                    watcher = self.watcher
                    assert watcher is not None
                    engine.submit_decode(
                        r,
                        lambda cb, h=host, p=port, rm=room: watcher.wait(h, p, rm, cb),
                        self.waiting_timeout,
                    )
            elif cfg.mode == "prefill":
                r.room = room_key(rooms[i]) if rooms[i] is not None else None
                r.max_new = 1
                engine.submit_prefill(r)
            else:
                engine.submit_prefill(r)

    async def _respond(self, call: GenerateCall):
        if call.stream:
            return httpd.StreamResponse(call.run_stream)
        ok = await call.done
        if not ok:
            return httpd.Response(400, "client disconnected")
        return httpd.json_response(call.result())

    routes = {
        "/health": h_health,
        "/health_generate": h_health,
        "/ready": h_ready,
        "/model_info": h_model_info,
        "/get_model_info": h_model_info,
        "/server_info": h_server_info,
        "/get_server_info": h_server_info,
        "/v1/models": h_models,
        "/get_load": h_get_load,
        "/v1/loads": h_loads,
        "/metrics": h_metrics,
        "/flush_cache": h_flush_cache,
        "/slow_down": h_slow_down,
        "/start_profile": h_start_profile,
        "/stop_profile": h_stop_profile,
        "/start_expert_distribution_record": h_expert_start,
        "/stop_expert_distribution_record": h_expert_stop,
        "/dump_expert_distribution_record": h_expert_dump,
        "/generate": h_generate,
        "/v1/completions": h_completions,
    }


# --------------------------------------------------------------------------- nodes >= 1


class PeerNode:
    def __init__(self, cfg: ServerConfig, log: LogWriter, exit_future: asyncio.Future) -> None:
        self.cfg = cfg
        self.log = log
        self.exit_future = exit_future
        host, port = cfg.dist_addr()
        self.link = Link(host, port, cfg.node_rank, self.dispatch)
        self.prefixes = {t: cfg.prefix_of(t) for t in cfg.local_tp_ranks()}
        self.shutting_down = False

    async def health(self, req: httpd.Request):
        if req.path in ("/health", "/health_generate", "/ping"):
            return httpd.Response(200)
        return httpd.json_response({"detail": "Not Found"}, 404)

    async def start(self) -> None:
        cfg = self.cfg
        self.http = await httpd.serve(cfg.ns.host, cfg.ns.port, self.health)
        local = cfg.local_tp_ranks()
        self.log.lines([(self.prefixes[t], "Init torch distributed begin.") for t in local])
        try:
            await self.link.connect(cfg.knobs.dist_timeout_s)
        except (TimeoutError, ConnectionAbortedError) as exc:
            self.log.line(f"RuntimeError: node rank {cfg.node_rank}: {exc}")
            self._exit(1)
            return
        self.log.lines(
            [(self.prefixes[t], "Init torch distributed ends. mem usage=0.00 GB") for t in local]
        )
        asyncio.ensure_future(self._serve())

    async def _serve(self) -> None:
        reason = await self.link.run()
        if reason == "bye" or self.shutting_down:
            self._exit(0)
            return
        self.log.line(
            f"RuntimeError: node rank {self.cfg.node_rank} lost node 0 "
            f"({self.cfg.ns.dist_init_addr}): {reason}",
            self._first_prefix(),
        )
        self._exit(1)

    def _first_prefix(self) -> str:
        return self.prefixes[self.cfg.local_tp_ranks()[0]]

    def _exit(self, code: int) -> None:
        if not self.exit_future.done():
            self.exit_future.set_result(code)

    async def dispatch(self, msg: dict) -> dict | None:
        kind = msg.get("t")
        if kind == "L":
            self.log.lines((p, m) for p, m in msg["l"])
        elif kind == "pstart":
            meta = msg["meta"]
            stage = meta["stage"] if meta.get("by_stage") else None
            out_dir = default_profile_dir(meta.get("output_dir"))
            self.log.lines(
                [
                    (
                        self.prefixes[t],
                        self.cfg.dialect.profile_start_line(out_dir, meta["profile_id"], stage),
                    )
                    for t in self.cfg.local_tp_ranks()
                ]
            )
        elif kind == "pstop":
            meta, steps = msg["meta"], msg["steps"]
            stage = meta["stage"] if meta.get("by_stage") else None
            local = self.cfg.local_tp_ranks()
            self.log.lines(
                [(self.prefixes[t], self.cfg.dialect.profile_stop_line(stage)) for t in local]
            )
            loop = asyncio.get_running_loop()
            paths = await loop.run_in_executor(
                None, export_traces, self.cfg, self.cfg.node_rank, meta, steps
            )
            out_dir = default_profile_dir(meta.get("output_dir"))
            self.log.lines(
                [(self.prefixes[t], self.cfg.dialect.profile_done_line(out_dir)) for t in local]
            )
            return {"paths": paths}
        return None

    async def stop(self) -> None:
        self.shutting_down = True


# --------------------------------------------------------------------------- main


def _server_args_line(cfg: ServerConfig) -> str:
    items = ", ".join(f"{k}={v!r}" for k, v in cfg.server_args_dict().items())
    return f"server_args=ServerArgs({items})"


async def amain(cfg: ServerConfig, log: LogWriter) -> int:
    loop = asyncio.get_running_loop()
    exit_future: asyncio.Future = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, lambda: exit_future.done() or exit_future.set_result(0))
        except (NotImplementedError, RuntimeError):
            pass
    for warning in cfg.warnings:
        log.line(f"WARNING server_args.py: {warning}")
    log.line(_server_args_line(cfg))
    log.line(
        f"{NOTICE} (SGLang dialect {cfg.knobs.sglang_version}, node rank "
        f"{cfg.node_rank} of {cfg.nnodes}, mode {cfg.mode})"
    )
    if cfg.unknown:
        log.line(
            "pdbench emulator: flags recorded but not emulated: "
            + json.dumps(cfg.unknown, sort_keys=True, default=str)
        )
    node: NodeZero | PeerNode
    try:
        node = (
            NodeZero(cfg, log, exit_future)
            if cfg.node_rank == 0
            else PeerNode(cfg, log, exit_future)
        )
    except StartupError as exc:
        log.line(f"Exception: {exc}")
        return 1
    if cfg.node_rank == 0:
        log.line(
            "pdbench emulator knobs (not a measurement): "
            + json.dumps(cfg.knobs.as_dict(), sort_keys=True)
        )
    try:
        start = asyncio.ensure_future(node.start())
        done, _ = await asyncio.wait({start, exit_future}, return_when=asyncio.FIRST_COMPLETED)
        if start in done and start.exception() is not None:
            exc = start.exception()
            if isinstance(exc, OSError):
                log.line(f"Exception: cannot bind or connect: {exc}")
                return 1
            raise exc
        code = await exit_future
    finally:
        await node.stop()
    return code


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        cfg = parse_args(argv)
    except UsageError as exc:
        sys.stderr.write(
            "usage: python -m pdbench.emulator [SGLang launch_server flags]\n"
            f"python -m pdbench.emulator: error: {exc}\n"
        )
        return 2
    except StartupError as exc:
        LogWriter().line(f"Exception: {exc}")
        return 1
    log = LogWriter()
    try:
        return asyncio.run(amain(cfg, log))
    except KeyboardInterrupt:
        return 0
