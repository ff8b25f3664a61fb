"""Write small traces with torch's profiler on a CUDA GPU, for the trace reader's tests.

A decode-like loop: one CUDA graph (a chain of bf16 matrix products, about 2 ms of GPU work
on an H200) is captured once and replayed once per step; each step then copies a scalar of
the result to the host, as a server does with its sampled tokens, and sleeps briefly, as a
scheduler does between batches. Run with a Python whose torch sees a GPU:

    python tests/data/traces/make_gpu_traces.py [--out DIR]

It writes, gzipped as SGLang writes them:

* ``gpu-graph-steps-TP-0.trace.json.gz``: each step inside
  ``record_function("step[DECODE bs=64]")``;
* ``gpu-graph-nospans-TP-0.trace.json.gz``: the same loop without step spans, so only the
  ``cudaGraphLaunch`` calls mark the steps;

and ``expected-gpu.json`` with the step count and the GPU time of one replay.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

HERE = Path(__file__).resolve().parent
BS = 64
HIDDEN = 8192
LAYERS = 48
STEPS = 12
HOST_GAP_S = 0.0005


def _export_gz(prof: profile, dest: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(raw))
        with open(raw, "rb") as src, gzip.open(dest, "wb", compresslevel=9) as dst:
            shutil.copyfileobj(src, dst)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    dev = torch.device("cuda")
    torch.manual_seed(0)
    weights = [
        torch.randn(HIDDEN, HIDDEN, device=dev, dtype=torch.bfloat16) * 0.01 for _ in range(4)
    ]
    x = torch.randn(BS, HIDDEN, device=dev, dtype=torch.bfloat16)

    def forward(h: torch.Tensor) -> torch.Tensor:
        for i in range(LAYERS):
            h = torch.tanh(h @ weights[i % len(weights)])
        return h

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            forward(x)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = forward(x)

    def step() -> None:
        graph.replay()
        out[0, 0].item()  # the host waits for the result, like copy_result_to_cpu

    for _ in range(5):
        step()
    # GPU time of one replay, outside the profiler.
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    replay_ms = start.elapsed_time(end) / 10

    expected = {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(),
        "replay_ms": replay_ms,
    }
    for name, spans in (
        ("gpu-graph-steps-TP-0.trace.json.gz", True),
        ("gpu-graph-nospans-TP-0.trace.json.gz", False),
    ):
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(STEPS):
                if spans:
                    with record_function(f"step[DECODE bs={BS}]"):
                        step()
                else:
                    step()
                time.sleep(HOST_GAP_S)
        _export_gz(prof, args.out / name)
        expected[name] = {
            "method": "step_spans" if spans else "cuda_graph_launch",
            "steps": STEPS - 1,
            "batch_sizes": [BS] * STEPS if spans else None,
        }
        print(f"{args.out / name}: {os.path.getsize(args.out / name)} bytes")
    (args.out / "expected-gpu.json").write_text(json.dumps(expected, indent=2) + "\n")
    print(json.dumps(expected))


if __name__ == "__main__":
    main()
