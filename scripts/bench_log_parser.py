#!/usr/bin/env python3
"""Benchmark pdbench.loglines on a large synthetic decode log.

Writes a log of ``--lines`` lines (default 1,000,000) as 48 DP ranks with
``--decode-log-interval 1`` print it: mostly decode lines in the SGLang v0.5.5 layout
with the standard ``[time DPx TPx EPx]`` prefix, with a sleep line and an unrelated
uvicorn line now and then. Then reads it with ``iter_log`` once per layout and prints
lines/s:

1. ``standard``: the lines as SGLang writes them (the common path);
2. ``srun-label``: the same lines behind ``srun --label``'s ``12: `` (a wrapped layout);
3. ``no-prefix``: the same messages without any prefix.

    python scripts/bench_log_parser.py [--lines 1000000] [--out DIR] [--layout standard]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from pdbench.loglines import iter_log  # noqa: E402

RANKS = 48


def _line(i: int) -> str:
    rank = i % RANKS
    second = 1763835866 + i // (RANKS * 10)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(second))
    if i % 997 == 0:
        return f"[{stamp}] INFO:     10.0.0.1:48432 - \"POST /generate HTTP/1.1\" 200 OK\n"
    if i % 101 == 0:
        return f"[{stamp} DP{rank} TP{rank} EP{rank}] Scheduler.run_batch sleep 2.0s\n"
    running = 64 + i % 960
    return (
        f"[{stamp} DP{rank} TP{rank} EP{rank}] Decode batch, #running-req: {running}, "
        f"#token: {running * 2048}, token usage: 0.66, pre-allocated usage: 0.00, "
        "#prealloc-req: 0, #transfer-req: 0, #retracted-req: 0, cuda graph: True, "
        f"gen throughput (token/s): {running * 13.01:.2f}, #queue-req: {i % 900}, \n"
    )


def _wrap(layout: str, line: str, i: int) -> str:
    if layout == "srun-label":
        return f"{i % RANKS:2d}: {line}"
    if layout == "no-prefix":
        return line[line.index("] ") + 2 :]
    return line


def write_log(path: Path, lines: int, layout: str) -> int:
    size = 0
    with open(path, "w") as f:
        for i in range(lines):
            text = _wrap(layout, _line(i), i)
            size += len(text)
            f.write(text)
    return size


def bench(path: Path) -> tuple[float, int]:
    start = time.perf_counter()
    n = sum(1 for _ in iter_log(path))
    return time.perf_counter() - start, n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--layout", action="append",
                        choices=["standard", "srun-label", "no-prefix"])
    args = parser.parse_args()
    layouts = args.layout or ["standard", "srun-label", "no-prefix"]
    with tempfile.TemporaryDirectory(dir=args.out) as tmp:
        for layout in layouts:
            path = Path(tmp) / f"{layout}.log"
            size = write_log(path, args.lines, layout)
            seconds, records = bench(path)
            print(f"{layout:11s} {args.lines} lines ({size / 1e6:.0f} MB), {records} records: "
                  f"{seconds:.2f} s, {args.lines / seconds:,.0f} lines/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
