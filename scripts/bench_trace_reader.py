#!/usr/bin/env python3
"""Benchmark pdbench.trace on a large synthetic profiler trace.

Writes a ``.trace.json.gz`` of ``--size-gb`` GB uncompressed (default 1.2) laid out as Kineto
writes it (header with deviceProperties and distributedInfo, then one event per multi-line
block: Python frames, aten ops, CUDA runtime calls and kernels with realistic names and
args), with ``step[...]`` spans at known times so the right answer is known. Then measures,
each in its own process so that peak memory is its own:

1. ``gunzip``: streaming zlib decompression to nowhere (the ceiling for any reader);
2. ``step_time``: ``pdbench.trace.step_time``;
3. ``json.load``: ``json.load`` of the whole file, then a scan of the events for the same markers.

and prints seconds, MB/s of uncompressed trace (MB = 10^6 bytes), peak RSS (VmHWM) and the
speed ratio against ``json.load``, checked against the targets: at least 100 MB/s, less than
512 MB peak RSS and at least 3 times as fast as ``json.load``. It also checks that
``step_time`` returns the generated ground truth. Exit status 1 if a check fails.

    python scripts/bench_trace_reader.py [--size-gb 1.2] [--out DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

TARGET_MBPS = 100.0
TARGET_RSS_MB = 512.0
TARGET_RATIO = 3.0

HEADER = """
  {
    "schemaVersion": 1,
    "deviceProperties": [
%s
    ],
      "cupti_version": 28,
      "cuda_runtime_version": 12090,
      "cuda_driver_version": 13000,
      "distributedInfo": %s,
  "traceEvents": [
"""

DEVICE = """    {
      "id": %d, "name": "NVIDIA GB200", "totalGlobalMem": 197897748480,
      "computeMajor": 10, "computeMinor": 0,
      "maxThreadsPerBlock": 1024, "maxThreadsPerMultiprocessor": 2048,
      "regsPerBlock": 65536, "warpSize": 32,
      "sharedMemPerBlock": 49152, "numSms": 152
    , "regsPerMultiprocessor": 65536, "sharedMemPerBlockOptin": 232448, "sharedMemPerMultiprocessor": 233472
    }"""

FOOTER = """
  {
    "name": "Record Window End", "ph": "i", "s": "g",
    "pid": "", "tid": "", "ts": %.3f
  }
  ],
  "traceName": "/tmp/tmp1pfm7898.json"
}"""

PID = 709108

PY_FRAME = """  {
    "ph": "X", "cat": "python_function", "name": "%s", "pid": %d, "tid": %d,
    "ts": %.3f, "dur": %.3f,
    "args": {
      "Python parent id": %d, "Python id": %d, "Ev Idx": %d
    }
  },
"""
CPU_OP = """  {
    "ph": "X", "cat": "cpu_op", "name": "%s", "pid": %d, "tid": %d,
    "ts": %.3f, "dur": %.3f,
    "args": {
      "External id": %d,"Record function id": 0, "Concrete Inputs": ["", "", "1"], "Input type": ["c10::BFloat16", "c10::BFloat16", "Scalar"], "Input Strides": [[7168, 1], [7168, 1], []], "Input Dims": [[1024, 7168], [1024, 7168], []], "Ev Idx": %d
    }
  },
"""
RUNTIME = """  {
    "ph": "X", "cat": "cuda_runtime", "name": "%s", "pid": %d, "tid": %d,
    "ts": %.3f, "dur": %.3f,
    "args": {
      "External id": %d,      "cbid": 211, "correlation": %d
    }
  },
  {
    "ph": "s", "id": %d, "pid": %d, "tid": %d, "ts": %.3f,
    "cat": "ac2g", "name": "ac2g"
  },
"""
KERNEL = """  {
    "ph": "X", "cat": "kernel", "name": "%s", "pid": 0, "tid": 7,
    "ts": %.3f, "dur": %.3f,
    "args": {
      "External id": %d,      "queued": 0, "device": 0, "context": 1,      "stream": 7, "correlation": %d,      "registers per thread": 40,      "shared memory": 0,      "blocks per SM": 0.006579,      "warps per SM": 0.026316,      "grid": [132, 1, 1],      "block": [128, 1, 1],      "est. achieved occupancy %%": 0
    }
  },
  {
    "ph": "f", "id": %d, "pid": 0, "tid": 7, "ts": %.3f,
    "cat": "ac2g", "name": "ac2g", "bp": "e"
  },
"""
SPAN = """  {
    "ph": "X", "cat": "%s", "name": "%s", "pid": %s, "tid": %s,
    "ts": %.3f, "dur": %.3f,
    "args": {
      "External id": %d,"Record function id": 0, "Ev Idx": %d
    }
  },
"""
GRAPH_LAUNCH = """  {
    "ph": "X", "cat": "cuda_runtime", "name": "cudaGraphLaunch", "pid": %d, "tid": %d,
    "ts": %.3f, "dur": %.3f,
    "args": {
            "cbid": 311, "correlation": %d
    }
  },
"""

PY_NAMES = [
    f"/sgl-workspace/sglang/python/sglang/srt/{mod}.py({line}): {fn}"
    for mod, fn in [
        ("managers/scheduler", "get_next_batch_to_run"),
        ("managers/scheduler", "process_batch_result"),
        ("managers/tp_worker", "forward_batch_generation"),
        ("model_executor/model_runner", "forward_decode"),
        ("model_executor/cuda_graph_runner", "replay_prepare"),
        ("layers/moe/ep_moe/layer", "forward"),
        ("layers/moe/token_dispatcher/deepep", "dispatch_a"),
        ("layers/attention/flashinfer_mla_backend", "init_forward_metadata"),
        ("mem_cache/radix_cache", "match_prefix"),
        ("sampling/sampling_batch_info", "update_regex_vocab_mask"),
    ]
    for line in (112, 587, 1204, 2210)
] + [
    "torch/nn/modules/module.py(1773): _call_impl",
    "torch/nn/modules/module.py(1762): _wrapped_call_impl",
    "<built-in method item of Tensor object at 0x7f3c2c1e7a10>",
    "<built-in function isinstance>",
    "threading.py(1162): is_alive",
]
OP_NAMES = [
    "aten::add",
    "aten::mul",
    "aten::index",
    "aten::slice",
    "aten::as_strided",
    "aten::copy_",
    "aten::to",
    "aten::empty",
    "aten::zeros",
    "aten::cat",
    "aten::view",
    "aten::sum",
]
KERNEL_NAMES = [
    "void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctorOnSelf_add<long>, "
    "std::array<char*, 2ul> >(int, at::native::CUDAFunctorOnSelf_add<long>, "
    "std::array<char*, 2ul>)",
    "void at::native::index_elementwise_kernel<128, 4, at::native::gpu_index_kernel<at::native::"
    "index_kernel_impl<at::native::OpaqueType<4> >(at::TensorIteratorBase&, c10::ArrayRef<long>, "
    "c10::ArrayRef<long>)::{lambda(char*, char const*, long)#1}>(at::TensorIteratorBase&, "
    "c10::ArrayRef<long>, c10::ArrayRef<long>)::{lambda(int)#1}>(long)",
    "void cutlass::device_kernel<flashinfer::gemm::GemmUniversal<"
    "cute::tuple<int, int, int, int>>>(Params)",
    "void deep_ep::internode_ll::dispatch<false, 7168, 256>"
    "(void*, void*, int*, long*, int, int, int)",
    "ncclDevKernel_AllGather_RING_LL(ncclDevKernelArgsStorage<4096ul>)",
]
SCHED_FRAME = "/sgl-workspace/sglang/python/sglang/srt/managers/scheduler.py(1985): run_batch"


def _ts(x: float) -> float:
    """The value a reader gets back for a ts written with three decimals."""
    return float("%.3f" % x)


def generate(path: Path, size_bytes: int, events_per_step: int, seed: int = 1) -> dict:
    """Write the synthetic trace; return the ground truth as step_time should report it."""
    rng = random.Random(seed)
    comp = zlib.compressobj(1, zlib.DEFLATED, 31)
    written = 0
    out = open(path, "wb")

    def put(text: str) -> None:
        nonlocal written
        b = text.encode()
        written += len(b)
        out.write(comp.compress(b))

    devices = ",\n".join(DEVICE % i for i in range(4))
    dist = json.dumps(
        {
            "backend": "nccl",
            "rank": 0,
            "world_size": 48,
            "pg_count": 40,
            "pg_config": [
                {
                    "pg_name": str(i),
                    "pg_desc": "undefined",
                    "backend_config": "cuda:nccl",
                    "pg_size": 48,
                    "ranks": list(range(48)),
                }
                for i in range(40)
            ],
        }
    )
    put(HEADER % (devices, dist))

    t = 4564592876673.644
    ext = corr = idx = pyid = 0
    starts: list[float] = []
    modes: list[str] = []
    bss: list[int] = []
    step = 0
    while written < size_bytes:
        # One scheduler step: a run_batch frame, the step span (and its GPU mirror), a CUDA
        # graph launch, then filler events that fill the step's time.
        mode, bs = ("EXTEND", 1) if step % 10 == 7 else ("DECODE", 256)
        period_us = (45000.0 if mode == "EXTEND" else 25000.0) + rng.uniform(-2000.0, 2000.0)
        start = t + 3.0
        name = f"step[EXTEND bs={bs} toks=2048]" if mode == "EXTEND" else f"step[DECODE bs={bs}]"
        starts.append(_ts(start))
        modes.append(mode)
        bss.append(bs)
        parts = [
            PY_FRAME % (SCHED_FRAME, PID, PID, t, period_us - 10.0, 40, pyid, idx),
            SPAN % ("user_annotation", name, PID, PID, start, period_us * 0.6, ext, idx + 1),
            GRAPH_LAUNCH % (PID, PID, start + 40.0, 1700.0, corr),
            SPAN
            % ("gpu_user_annotation", name, 0, 7, start + 200.0, period_us * 0.7, ext, idx + 2),
        ]
        ext += 1
        corr += 1
        idx += 3
        pyid += 1
        dt = (period_us - 20.0) / events_per_step
        ft = start + 50.0
        n = 0
        while n < events_per_step:
            r = rng.random()
            if r < 0.7:
                parts.append(
                    PY_FRAME % (rng.choice(PY_NAMES), PID, PID, ft, dt * 0.8, pyid - 1, pyid, idx)
                )
                pyid += 1
            elif r < 0.85:
                parts.append(CPU_OP % (rng.choice(OP_NAMES), PID, PID, ft, dt * 0.5, ext, idx))
                ext += 1
            elif r < 0.93:
                parts.append(
                    RUNTIME % ("cudaLaunchKernel", PID, PID, ft, 5.1, ext, corr, corr, PID, PID, ft)
                )
                corr += 1
            else:
                parts.append(
                    KERNEL % (rng.choice(KERNEL_NAMES), ft + 30.0, dt, ext, corr, corr, ft + 30.0)
                )
                corr += 1
            idx += 1
            ft += dt
            n += 1
            if len(parts) >= 4000:
                put("".join(parts))
                parts = []
        put("".join(parts))
        t += period_us
        step += 1
    put(FOOTER % t)
    out.write(comp.flush())
    out.close()

    periods = [
        (starts[i + 1] - starts[i]) / 1000.0 for i in range(len(starts) - 1) if modes[i] == "DECODE"
    ]
    return {
        "uncompressed_bytes": written,
        "method": "step_spans",
        "steps": len(periods),
        "step_ms": [round(p, 6) for p in periods],
        "batch_sizes": [b for b, m in zip(bss, modes) if m == "DECODE"],
        "modes": modes,
    }


# --------------------------------------------------------------------------------------------
# Measurements, each run in a child process


def _peak_rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _measure(kind: str, path: str) -> dict:
    sys.path.insert(0, str(SRC))
    t0 = time.perf_counter()
    result = None
    if kind == "gunzip":
        d = zlib.decompressobj(31)
        n = 0
        with open(path, "rb") as f:
            while True:
                data = f.read(4 << 20)
                if not data:
                    break
                n += len(d.decompress(data, 4 << 20))
                while d.unconsumed_tail:
                    n += len(d.decompress(d.unconsumed_tail, 4 << 20))
        n += len(d.flush())
        result = {"bytes": n}
    elif kind == "step_time":
        from pdbench.trace import step_time

        r = step_time(path)
        result = {
            k: r[k]
            for k in ("method", "layout", "steps", "step_ms", "median_ms", "batch_sizes", "modes")
        }
    elif kind == "json_load":
        import gzip

        from pdbench.trace import _classify

        with gzip.open(path, "rb") as f:
            doc = json.load(f)
        counts: dict[str, int] = {}
        for ev in doc["traceEvents"]:
            k = _classify(ev)
            if k is not None:
                counts[k] = counts.get(k, 0) + 1
        result = {"markers": counts}
    else:
        raise SystemExit(f"unknown measurement {kind}")
    return {"seconds": time.perf_counter() - t0, "peak_rss_mb": _peak_rss_mb(), "result": result}


def _run_child(kind: str, path: Path) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--measure", kind, str(path)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"measurement {kind} failed:\n{p.stderr}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def _mem_available_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


# json.load of a Kineto trace peaked at about 5x the uncompressed size here (78 MB -> 390 MB).
JSON_LOAD_RSS_FACTOR = 6.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--size-gb",
        type=float,
        default=1.2,
        help="uncompressed size of the trace (GB = 10^9 bytes)",
    )
    ap.add_argument(
        "--out",
        type=Path,
        help="directory for the trace (kept; reused if present); default a temp dir",
    )
    ap.add_argument("--events-per-step", type=int, default=20000)
    ap.add_argument("--skip-json-load", action="store_true", help="do not measure json.load")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument("--measure", nargs=2, metavar=("KIND", "FILE"), help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.measure:
        print(json.dumps(_measure(*args.measure)))
        return 0

    tmp = None
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        folder = args.out
    else:
        tmp = tempfile.TemporaryDirectory(prefix="pdbench-bench-")
        folder = Path(tmp.name)
    size = int(args.size_gb * 1e9)
    path = folder / f"bench-{args.size_gb:g}GB-{args.events_per_step}-TP-0.trace.json.gz"
    truth_path = path.with_name(path.name + ".expected.json")
    log = sys.stderr if args.json else sys.stdout
    if path.exists() and truth_path.exists():
        truth = json.loads(truth_path.read_text())
        print(f"reusing {path}", file=log)
    else:
        print(f"writing {path} ({args.size_gb:g} GB uncompressed) ...", file=log, flush=True)
        t0 = time.perf_counter()
        truth = generate(path, size, args.events_per_step)
        truth_path.write_text(json.dumps(truth))
        print(f"  written in {time.perf_counter() - t0:.1f} s", file=log)
    nbytes = truth["uncompressed_bytes"]
    print(
        f"trace: {nbytes / 1e6:.0f} MB uncompressed, {path.stat().st_size / 1e6:.0f} MB gzipped, "
        f"{len(truth['modes'])} steps",
        file=log,
        flush=True,
    )

    rows: dict[str, dict] = {}
    for kind in ("gunzip", "step_time", "json_load"):
        if kind == "json_load":
            if args.skip_json_load:
                rows[kind] = {"skipped": "--skip-json-load"}
                continue
            avail = _mem_available_bytes()
            need = nbytes * JSON_LOAD_RSS_FACTOR
            if avail is not None and need > 0.8 * avail:
                rows[kind] = {
                    "skipped": f"json.load would need about {need / 2**30:.1f} GiB of memory; "
                    f"{avail / 2**30:.1f} GiB available"
                }
                print(f"skipping json.load: {rows[kind]['skipped']}", file=log)
                continue
        print(f"measuring {kind} ...", file=log, flush=True)
        r = _run_child(kind, path)
        r["mb_per_s"] = nbytes / 1e6 / r["seconds"]
        rows[kind] = r

    ours = rows["step_time"]
    res = ours["result"]
    correct = (
        res["method"] == truth["method"]
        and res["steps"] == truth["steps"]
        and res["batch_sizes"] == truth["batch_sizes"]
        and res["modes"] == truth["modes"]
        and all(abs(a - b) < 1e-5 for a, b in zip(res["step_ms"], truth["step_ms"]))
    )
    ratio = None
    if "seconds" in rows["json_load"]:
        ratio = rows["json_load"]["seconds"] / ours["seconds"]
        for k in rows:
            if "seconds" in rows[k]:
                rows[k]["ratio_vs_json_load"] = rows["json_load"]["seconds"] / rows[k]["seconds"]
    checks = {
        "throughput": ours["mb_per_s"] >= TARGET_MBPS,
        "peak_rss": ours["peak_rss_mb"] < TARGET_RSS_MB,
        "vs_json_load": None if ratio is None else ratio >= TARGET_RATIO,
        "ground_truth": correct,
    }
    report = {
        "file": str(path),
        "uncompressed_mb": nbytes / 1e6,
        "gzipped_mb": path.stat().st_size / 1e6,
        "steps_in_trace": len(truth["modes"]),
        "rows": {k: {kk: vv for kk, vv in v.items() if kk != "result"} for k, v in rows.items()},
        "step_time_result": {k: res[k] for k in ("method", "layout", "steps", "median_ms")},
        "targets": {
            "mb_per_s": TARGET_MBPS,
            "peak_rss_mb": TARGET_RSS_MB,
            "ratio_vs_json_load": TARGET_RATIO,
        },
        "checks": checks,
    }
    if "result" in rows.get("json_load", {}):
        report["json_load_markers"] = rows["json_load"]["result"]["markers"]

    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print()
        print(f"{'reader':<12} {'seconds':>9} {'MB/s':>9} {'peak RSS MB':>12} {'x json.load':>12}")
        for k, v in rows.items():
            if "skipped" in v:
                print(f"{k:<12} skipped: {v['skipped']}")
                continue
            rr = v.get("ratio_vs_json_load")
            print(
                f"{k:<12} {v['seconds']:>9.2f} {v['mb_per_s']:>9.0f} {v['peak_rss_mb']:>12.0f} "
                f"{(f'{rr:.1f}' if rr is not None else '-'):>12}"
            )
        print()

        def verdict(ok: bool | None) -> str:
            return "n/a" if ok is None else ("PASS" if ok else "FAIL")

        lines = [
            (
                f"step_time >= {TARGET_MBPS:.0f} MB/s",
                checks["throughput"],
                f"{ours['mb_per_s']:.0f}",
            ),
            (
                f"step_time peak RSS < {TARGET_RSS_MB:.0f} MB",
                checks["peak_rss"],
                f"{ours['peak_rss_mb']:.0f}",
            ),
            (
                f"step_time >= {TARGET_RATIO:.0f}x json.load",
                checks["vs_json_load"],
                f"{ratio:.1f}x" if ratio is not None else "json.load not measured",
            ),
            (
                "step_time = ground truth",
                checks["ground_truth"],
                f"{res['method']}, {res['steps']} periods, median {res['median_ms']} ms",
            ),
        ]
        for label, ok, detail in lines:
            print(f"{label + ':':<30} {verdict(ok)} ({detail})")
    if tmp is not None:
        tmp.cleanup()
    return 0 if all(v is not False for v in checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
