"""Torch-profiler (Kineto) traces of emulated steps, in the layout torch writes.

The file is gzip-compressed Chrome trace JSON laid out as Kineto writes it (compare a real
SGLang trace, e.g. the v0.5.5.post2 GB200 traces in shifangx/Scripts-SGLang): a header with
``schemaVersion``, ``deviceProperties``, ``distributedInfo``, ``baseTimeNanoseconds``, then
``"traceEvents": [`` with one event per block (``\\n  {`` … ``\\n  }``), then ``traceName``.

Per captured step (timestamps are the emulator's own step boundaries, in microseconds of
the node-0 monotonic clock, so a test knows the true period of every step):

* SGLang >= 0.5.11: a CPU ``user_annotation`` span ``step[DECODE bs=N]``
  (``step[EXTEND bs=N toks=T]``, ``step[IDLE bs=0]``) around the forward, mirrored as a
  ``gpu_user_annotation`` on the GPU stream when GPU activity is traced; >= 0.5.15 adds the
  ``scheduler.get_next_batch_to_run`` / ``scheduler.run_batch`` /
  ``scheduler.process_batch_result`` spans;
* every version: with ``with_stack`` the ``…/scheduler.py(NNNN): run_batch``
  ``python_function`` frame (it starts where ``run_batch`` starts, so it encloses a
  ``slow_down`` sleep, with a nested ``<built-in function sleep>`` frame), a nested
  ``model_runner.py(…): forward`` frame, and for a decode step run in a CUDA graph one
  ``cudaGraphLaunch`` ``cuda_runtime`` event; a GPU kernel per forward.

Nothing in the file says what the configured step model is: the ground truth goes only to
the emulator's own log.
"""

from __future__ import annotations

import glob
import gzip
import json
import os
import re
import uuid
from dataclasses import dataclass
from typing import Any

from .dialect import Dialect

DEVICE_NAME = "pdbench emulator (no GPU)"


@dataclass
class TraceRank:
    tp: int
    dp: int
    world_size: int
    local_gpu: int
    gpus_per_node: int
    pid: int


def step_name(mode: str, bs: int, toks: int) -> str:
    if mode == "EXTEND":
        return f"step[EXTEND bs={bs} toks={toks}]"
    return f"step[{mode} bs={bs}]"


class _Events:
    def __init__(self) -> None:
        self.blocks: list[str] = []
        self.ext = 0

    def x(self, cat: str, name: str, pid: Any, tid: Any, ts: float, dur: float, args: str) -> None:
        self.blocks.append(
            "  {\n"
            f'    "ph": "X", "cat": "{cat}", "name": {json.dumps(name)}, '
            f'"pid": {pid}, "tid": {tid},\n'
            f'    "ts": {ts:.3f}, "dur": {max(dur, 0.001):.3f},\n'
            '    "args": {\n'
            f"      {args}\n"
            "    }\n"
            "  }"
        )

    def annotation_args(self) -> str:
        self.ext += 1
        return f'"External id": {self.ext},"Record function id": 0, "Ev Idx": {len(self.blocks)}'

    def meta(self, name: str, pid: Any, tid: Any, ts: float, args: str) -> None:
        self.blocks.append(
            "  {\n"
            f'    "name": "{name}", "ph": "M", "ts": {ts:.3f}, "pid": {pid}, "tid": {tid},\n'
            '    "args": {\n'
            f"      {args}\n"
            "    }\n"
            "  }"
        )


def rank_mode(step: dict, dp: int) -> tuple[str, int, int]:
    """(mode, bs, toks) of DP rank ``dp`` in a step record."""
    bs = step["bs"][dp]
    if step["kind"] == "EXTEND":
        toks = step["toks"][dp]
        return ("EXTEND", bs, toks) if toks > 0 else ("IDLE", 0, 0)
    return ("DECODE", bs, 0) if bs > 0 else ("IDLE", 0, 0)


def build_events(
    rank: TraceRank,
    steps: list[dict],
    dialect: Dialect,
    *,
    with_stack: bool,
    record_shapes: bool,
    cpu: bool,
    gpu: bool,
    cuda_graph_max_bs: int,
) -> tuple[list[str], float, float]:
    """The event blocks of one rank's trace, and the window's first and last µs."""
    ev = _Events()
    pid, tid = rank.pid, rank.pid
    gpid, gtid = rank.local_gpu, 7
    frame = dialect.run_batch_frame()
    forward_frame = (
        "/sgl-workspace/sglang/python/sglang/srt/model_executor/model_runner.py(1745): forward"
    )
    first = steps[0]["t0"] * 1e6 if steps else 0.0
    last = first
    correlation = 0
    for step in steps:
        mode, bs, toks = rank_mode(step, rank.dp)
        t0 = step["t0"] * 1e6
        sleep = step["sleep"] * 1e6
        fwd = step["fwd"] * 1e6
        f0 = t0 + sleep
        last = max(last, f0 + fwd)
        cpu_dur = max(min(fwd * 0.4, fwd - 20.0), 1.0)
        if cpu:
            if dialect.scheduler_spans:
                ev.x(
                    "user_annotation",
                    "scheduler.get_next_batch_to_run",
                    pid,
                    tid,
                    t0 - min(150.0, fwd * 0.05),
                    min(100.0, fwd * 0.03),
                    ev.annotation_args(),
                )
                ev.x(
                    "user_annotation",
                    "scheduler.run_batch",
                    pid,
                    tid,
                    t0 + 2.0,
                    sleep + cpu_dur + 30.0,
                    ev.annotation_args(),
                )
            if with_stack:
                ev.x(
                    "python_function",
                    frame,
                    pid,
                    tid,
                    t0,
                    sleep + cpu_dur + 40.0,
                    f'"Python parent id": 1, "Python id": {len(ev.blocks) + 2}, '
                    f'"Ev Idx": {len(ev.blocks)}',
                )
                if sleep > 0:
                    ev.x(
                        "python_function",
                        "<built-in function sleep>",
                        pid,
                        tid,
                        t0 + 5.0,
                        sleep - 10.0,
                        f'"Python parent id": {len(ev.blocks) + 1}, '
                        f'"Python id": {len(ev.blocks) + 2}, "Ev Idx": {len(ev.blocks)}',
                    )
                ev.x(
                    "python_function",
                    forward_frame,
                    pid,
                    tid,
                    f0 + 4.0,
                    cpu_dur + 8.0,
                    f'"Python parent id": {len(ev.blocks) + 1}, "Python id": '
                    f'{len(ev.blocks) + 2}, "Ev Idx": {len(ev.blocks)}',
                )
            if dialect.step_spans:
                ev.x(
                    "user_annotation",
                    step_name(mode, bs, toks),
                    pid,
                    tid,
                    f0 + 10.0,
                    cpu_dur,
                    ev.annotation_args(),
                )
            shapes = f', "Input Dims": [[{max(bs, 1)}]]' if record_shapes else ""
            ev.x(
                "cpu_op",
                "aten::copy_",
                pid,
                tid,
                f0 + 12.0,
                min(30.0, cpu_dur * 0.1),
                f'"External id": {ev.ext + 1},"Record function id": 0{shapes}, '
                f'"Ev Idx": {len(ev.blocks)}',
            )
            if mode == "DECODE" and bs <= cuda_graph_max_bs:
                correlation += 1
                ev.x(
                    "cuda_runtime",
                    "cudaGraphLaunch",
                    pid,
                    tid,
                    f0 + 10.0 + cpu_dur * 0.5,
                    cpu_dur * 0.3,
                    f'"cbid": 311, "correlation": {correlation}',
                )
            if dialect.scheduler_spans:
                ev.x(
                    "user_annotation",
                    "scheduler.process_batch_result",
                    pid,
                    tid,
                    f0 + fwd * 0.97,
                    fwd * 0.02,
                    ev.annotation_args(),
                )
        if gpu:
            if dialect.step_spans:
                ev.x(
                    "gpu_user_annotation",
                    step_name(mode, bs, toks),
                    gpid,
                    gtid,
                    f0 + 30.0,
                    fwd * 0.95 - 30.0,
                    f'"External id": {ev.ext}',
                )
            kernel = {
                "DECODE": "emulated_decode_forward",
                "EXTEND": "emulated_extend_forward",
                "IDLE": "emulated_idle_forward",
            }[mode]
            ev.x(
                "kernel",
                kernel,
                gpid,
                gtid,
                f0 + 35.0,
                fwd * 0.95 - 40.0,
                f'"External id": {ev.ext}, "device": {rank.local_gpu}, "stream": 7',
            )
    if cpu:
        ev.meta("process_name", pid, 0, first, '"name": "python3"')
        ev.meta("thread_name", pid, tid, first, f'"name": "thread {tid} (sglang::schedul)"')
    if gpu:
        ev.meta("process_name", gpid, 0, first, f'"name": "GPU {rank.local_gpu}"')
        ev.meta("thread_name", gpid, gtid, first, '"name": "stream 7 "')
    ev.blocks.append(
        "  {\n"
        f'    "ph": "X", "cat": "Trace", "ts": {first:.3f}, '
        f'"dur": {max(last - first, 0.001):.3f},\n'
        '    "pid": "Spans", "tid": "PyTorch Profiler",\n'
        '    "name": "PyTorch Profiler (0)",\n'
        '    "args": {\n'
        '      "Op count": 0\n'
        "    }\n"
        "  }"
    )
    ev.blocks.append(
        "  {\n"
        '    "name": "Record Window End", "ph": "i", "s": "g",\n'
        f'    "pid": "", "tid": "", "ts": {last + 50.0:.3f}\n'
        "  }"
    )
    return ev.blocks, first, last


def header(rank: TraceRank, *, with_stack: bool, record_shapes: bool, base_ns: int) -> str:
    devices = []
    for i in range(rank.gpus_per_node):
        devices.append(
            "    {\n"
            f'      "id": {i}, "name": "{DEVICE_NAME}", "totalGlobalMem": 0,\n'
            '      "computeMajor": 0, "computeMinor": 0,\n'
            '      "maxThreadsPerBlock": 0, "maxThreadsPerMultiprocessor": 0,\n'
            '      "regsPerBlock": 0, "warpSize": 32,\n'
            '      "sharedMemPerBlock": 0, "numSms": 0\n'
            "    }"
        )
    ranks = list(range(rank.world_size))
    dist = json.dumps(
        {
            "backend": "nccl",
            "rank": rank.tp,
            "world_size": rank.world_size,
            "pg_count": 1,
            "pg_config": [
                {
                    "pg_name": "0",
                    "pg_desc": "default_pg",
                    "backend_config": "cuda:nccl",
                    "pg_size": rank.world_size,
                    "ranks": ranks,
                }
            ],
            "nccl_version": "emulated",
        }
    )
    return (
        "\n  {\n"
        '    "schemaVersion": 1,\n'
        '    "deviceProperties": [\n' + ",\n".join(devices) + "\n    ],\n"
        f'      "distributedInfo": {dist},\n'
        f'      "record_shapes": {int(record_shapes)},\n'
        f'      "with_stack": {int(with_stack)},\n'
        f'      "trace_id": "{uuid.uuid4().hex.upper()}",\n'
        '  "displayTimeUnit": "ms",\n'
        f'  "baseTimeNanoseconds": {base_ns},\n'
        '  "traceEvents": [\n'
    )


def write_trace(
    path: str,
    rank: TraceRank,
    steps: list[dict],
    dialect: Dialect,
    *,
    with_stack: bool,
    record_shapes: bool,
    cpu: bool,
    gpu: bool,
    cuda_graph_max_bs: int,
    base_ns: int,
) -> int:
    """Write one rank's trace to ``path`` (gzip); return the number of events."""
    blocks, _first, _last = build_events(
        rank,
        steps,
        dialect,
        with_stack=with_stack,
        record_shapes=record_shapes,
        cpu=cpu,
        gpu=gpu,
        cuda_graph_max_bs=cuda_graph_max_bs,
    )
    text = (
        header(rank, with_stack=with_stack, record_shapes=record_shapes, base_ns=base_ns)
        + ",\n".join(blocks)
        + '\n  ],\n  "traceName": "'
        + os.path.basename(path)[: -len(".gz")]
        + '"\n}'
    )
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.partial")
    with gzip.open(tmp, "wb", compresslevel=6) as f:
        f.write(text.encode("utf-8"))
    os.replace(tmp, path)
    return len(blocks)


_RANK_PARTS = ("tp", "dp", "pp", "ep")


def _rank_parts(name: str) -> dict[str, int]:
    found = {}
    for part in _RANK_PARTS:
        m = re.search(rf"{part.upper()}-(\d+)", name)
        if m:
            found[part] = int(m.group(1))
    return found


def write_merged(directory: str, profile_id: str) -> tuple[str, int, int]:
    """What ``merge_profiles`` leaves (SGLang >= 0.5.4, ``utils/profile_merger.py``): every
    ``{profile_id}*.trace.json.gz`` rank file of ``directory`` in one compact-JSON
    ``merged-{profile_id}.trace.json.gz``, ordered by DP, EP, PP, TP rank, each event's
    ``pid`` prefixed with its rank (``[TP00-DP00-EP00] 100000``), the other header keys taken
    from the first file and ``deviceProperties`` concatenated. A prefixed file
    (``profile_prefix``) does not match the pattern and is left out, as in SGLang. Returns
    (path, events, files)."""
    merged_name = f"merged-{profile_id}.trace.json.gz"
    files = [
        f for f in glob.glob(os.path.join(glob.escape(directory), f"{profile_id}*.trace.json.gz"))
        if not f.endswith(merged_name) and "TP-" in f
    ]
    files.sort(key=lambda f: tuple(_rank_parts(os.path.basename(f)).get(k, 0)
                                   for k in ("dp", "ep", "pp", "tp")))
    merged: dict[str, Any] = {"traceEvents": []}
    devices: list = []
    for path in files:
        parts = _rank_parts(os.path.basename(path))
        label = "[" + "-".join(f"{k.upper()}{v:02d}" for k, v in parts.items()) + "]"
        with gzip.open(path, "rt", encoding="utf-8") as f:
            trace = json.load(f)
        for ev in trace.get("traceEvents", []):
            ev["pid"] = f"{label} {ev.get('pid')}"
            merged["traceEvents"].append(ev)
        devices += trace.pop("deviceProperties", [])
        for key, value in trace.items():
            merged.setdefault(key, value)
    if devices:
        merged["deviceProperties"] = devices
    out = os.path.join(directory, merged_name)
    with gzip.open(out, "wb") as f:
        f.write(json.dumps(merged).encode("utf-8"))
    return out, len(merged["traceEvents"]), len(files)
