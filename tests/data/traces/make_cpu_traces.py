"""Write small traces with torch's own profiler on the CPU, for the trace reader's tests.

Run with a Python that has torch (CPU build is enough), from any directory:

    python tests/data/traces/make_cpu_traces.py [--out DIR]

It writes, gzipped as SGLang writes them:

* ``cpu-steps-TP-0.trace.json.gz``: 12 steps, each a ``record_function("step[DECODE bs=8]")``
  span around a small matmul and a 5 ms sleep, with 2 ``step[EXTEND bs=1 toks=32]`` steps
  (sleep 15 ms) among them, as SGLang's ``ModelRunner.forward`` annotates forwards;
* ``cpu-run-batch-TP-0.trace.json.gz``: no step spans; with ``with_stack=True`` the Python
  frames of ``run_batch`` in a module ``scheduler.py`` (written into a temporary directory and
  imported from there), 10 calls, each sleeping 4 ms; each calls a nested ``run_batch`` of the
  same file, whose frame also matches and must not count as a step.

``expected.json`` beside the traces records what the tests check: step counts, batch sizes
and the sleeps.
"""

from __future__ import annotations

import argparse
import gzip
import importlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

HERE = Path(__file__).resolve().parent

DECODE_SLEEP_S = 0.005
EXTEND_SLEEP_S = 0.015
RUN_BATCH_SLEEP_S = 0.004
# Step modes in order; the EXTEND steps sit between DECODE steps as in a running server.
STEP_PLAN = ["DECODE"] * 4 + ["EXTEND"] + ["DECODE"] * 3 + ["EXTEND"] + ["DECODE"] * 3
N_RUN_BATCH = 10

# run_batch calls another run_batch in the same file, so the trace holds nested frames that
# match alike and only the outer ones are steps.
SCHEDULER_SOURCE = """
import time

import torch


class Worker:
    def __init__(self, sleep_s):
        self.sleep_s = sleep_s
        self.a = torch.randn(64, 64)

    def run_batch(self):
        torch.mm(self.a, self.a)
        time.sleep(self.sleep_s)


class Scheduler:
    def __init__(self, sleep_s):
        self.worker = Worker(sleep_s)

    def run_batch(self):
        self.worker.run_batch()

    def event_loop(self, n):
        for _ in range(n):
            self.run_batch()
"""


def _busy_matmul(a: torch.Tensor) -> None:
    torch.mm(a, a)


def _export_gz(prof: profile, dest: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(raw))
        with open(raw, "rb") as src, gzip.open(dest, "wb", compresslevel=9) as dst:
            shutil.copyfileobj(src, dst)


def make_steps_trace(dest: Path) -> dict:
    a = torch.randn(64, 64)
    _busy_matmul(a)  # warm up outside the profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for mode in STEP_PLAN:
            name = "step[DECODE bs=8]" if mode == "DECODE" else "step[EXTEND bs=1 toks=32]"
            with record_function(name):
                _busy_matmul(a)
                time.sleep(DECODE_SLEEP_S if mode == "DECODE" else EXTEND_SLEEP_S)
    _export_gz(prof, dest)
    decode_periods = sum(1 for i, m in enumerate(STEP_PLAN[:-1]) if m == "DECODE")
    return {
        "method": "step_spans",
        "modes": STEP_PLAN,
        "steps": decode_periods,
        "batch_sizes": [8] * STEP_PLAN.count("DECODE"),
        "decode_sleep_ms": DECODE_SLEEP_S * 1000,
        "extend_sleep_ms": EXTEND_SLEEP_S * 1000,
    }


def make_run_batch_trace(dest: Path) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "scheduler.py").write_text(SCHEDULER_SOURCE)
        sys.path.insert(0, tmp)
        try:
            scheduler = importlib.import_module("scheduler")
            s = scheduler.Scheduler(RUN_BATCH_SLEEP_S)
            s.run_batch()  # warm up outside the profile
            with profile(activities=[ProfilerActivity.CPU], with_stack=True) as prof:
                s.event_loop(N_RUN_BATCH)
        finally:
            sys.path.remove(tmp)
            sys.modules.pop("scheduler", None)
    _export_gz(prof, dest)
    return {
        "method": "run_batch_frames",
        "steps": N_RUN_BATCH - 1,
        "batch_sizes": None,
        "run_batch_frames": 2 * N_RUN_BATCH,
        "run_batch_sleep_ms": RUN_BATCH_SLEEP_S * 1000,
    }


def main() -> None:
    # One thread: a multi-threaded matmul this small can stall for tens of ms waking its pool,
    # which would swamp the sleeps the tests compare against.
    torch.set_num_threads(1)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    expected = {
        "torch": torch.__version__,
        "cpu-steps-TP-0.trace.json.gz": make_steps_trace(args.out / "cpu-steps-TP-0.trace.json.gz"),
        "cpu-run-batch-TP-0.trace.json.gz": make_run_batch_trace(
            args.out / "cpu-run-batch-TP-0.trace.json.gz"
        ),
    }
    (args.out / "expected.json").write_text(json.dumps(expected, indent=2) + "\n")
    for name in expected:
        if name.endswith(".gz"):
            print(f"{args.out / name}: {os.path.getsize(args.out / name)} bytes")


if __name__ == "__main__":
    main()
