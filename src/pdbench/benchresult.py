"""The benchmark clients' result lines, read into one summary.

``bench_serving`` and ``bench_one_batch_server`` append one JSON line per run to their
output file, each with its own keys (docs/sglang-formats.md, "Benchmark clients"). The
workflow validates the client's result (:func:`pdbench.client.collect_bench`) and puts its
numbers into ``throughput.csv`` (:mod:`pdbench.throughput`) through :func:`summarize`, so
both clients give the same fields:

==================== ===================================== =====================================
field                bench_serving                         bench_one_batch_server
==================== ===================================== =====================================
completed            ``completed``                         ``batch_size`` (the client raises
                                                           unless every request of its batch
                                                           streamed)
total_input_tokens   ``total_input_tokens``                ``batch_size × input_len``
total_output_tokens  ``total_output_tokens``               ``total_output_tokens`` (0.5.14+),
                                                           else ``batch_size × output_len``
duration_s           ``duration``                          ``latency``
output_throughput    ``output_throughput`` (output tokens  ``output_throughput`` (output tokens
                     / duration)                           / (latency − last TTFT): the decode
                                                           window)
==================== ===================================== =====================================
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from .errors import InputError

CLIENTS = ("bench_serving", "bench_one_batch_server")

# The keys each client's line must have for the summary (the rest are optional).
_REQUIRED = {
    "bench_serving": ("completed", "total_output_tokens", "duration", "output_throughput"),
    "bench_one_batch_server": ("batch_size", "input_len", "output_len", "latency",
                               "output_throughput"),
}


def last_line(path: Path) -> dict | None:
    """The last JSON line of a client's output file; None when the file is absent or empty."""
    try:
        lines = [line for line in path.read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        return None
    if not lines:
        return None
    try:
        line = json.loads(lines[-1])
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: last line is not JSON: {exc}") from None
    if not isinstance(line, dict):
        raise InputError(f"{path}: last line is {type(line).__name__}, not a JSON object")
    return line


def summarize(line: Mapping, client: str, *, source: str | Path = "client result") -> dict:
    """The summary fields of one result line of ``client`` (see the module docstring)."""
    if client not in _REQUIRED:
        raise InputError(f"{source}: unknown client {client!r} (known: {', '.join(CLIENTS)})")
    missing = [k for k in _REQUIRED[client] if line.get(k) is None]
    if missing:
        raise InputError(f"{source}: not a {client} result: no {', '.join(missing)}")
    try:
        if client == "bench_serving":
            summary = {
                "completed": int(line["completed"]),
                "total_input_tokens": _int_or_none(line.get("total_input_tokens")),
                "total_output_tokens": int(line["total_output_tokens"]),
                "duration_s": float(line["duration"]),
                "output_throughput": float(line["output_throughput"]),
            }
        else:
            batch = int(line["batch_size"])
            output_tokens = line.get("total_output_tokens")
            summary = {
                "completed": batch,
                "total_input_tokens": batch * int(line["input_len"]),
                "total_output_tokens": int(output_tokens) if output_tokens is not None
                else batch * int(line["output_len"]),
                "duration_s": float(line["latency"]),
                "output_throughput": float(line["output_throughput"]),
            }
    except (TypeError, ValueError) as exc:
        raise InputError(f"{source}: a {client} field is not a number: {exc}") from None
    return {"client": client, **summary}


def _int_or_none(value) -> int | None:
    return None if value is None else int(value)


__all__ = ["CLIENTS", "last_line", "summarize"]
