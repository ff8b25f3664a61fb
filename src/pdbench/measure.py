"""Decode throughput per GPU from SGLang logs and torch-profiler traces.

The number (the runbook's method; ``docs/method.md``)::

    tokens/s/GPU = global batch / step seconds / decode GPUs   (x accept length, speculative)

* **Per-rank batch.** For each decode DP rank, the batch of its profiled steps: the
  ``bs`` of the ``step[DECODE bs=N]`` spans in that rank's trace when present
  (SGLang >= 2026-04), else the ``#running-req`` of that rank's last ``Decode batch``
  line at or before its ``Profiling starts ... (with profile id: X)`` line.
* **Global batch.** The sum over every DP rank found in all the decode node logs.
* **Step time.** The median period between consecutive decode steps in the TP-0 trace
  (``pdbench.trace.step_time``); the other ranks' traces give the spread.
* **Cross-check.** The logs give an independent step time around the profile window:
  with ``--decode-log-interval 1`` each ``Decode batch`` line's ``gen throughput`` is that
  rank's tokens since its previous line over the elapsed time, so one step takes
  ``#running-req / gen throughput`` seconds. Lines inside the window, lines next to a
  ``slow_down`` sleep and the first line after a sleep are excluded. The profiler itself
  slows traced steps (about +35% on a CPU-bound toy model, about 2% on GB200), so both
  numbers are reported and a snapshot where they disagree by more than the tolerance is
  flagged.
"""

from __future__ import annotations

import os
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence

from .errors import InputError
from .loglines import iter_log, rank_key
from .trace import step_time, traces_for

# Decode lines taken on each side of the profile window for the log step time.
LOG_WINDOW_LINES = 5


def tokens_per_s_per_gpu(
    global_batch: float, step_ms: float, decode_gpus: int, accept_len: float = 1.0
) -> float:
    """The runbook's formula: 2048 / 0.065 / 8 = 3938 tok/s/GPU."""
    if step_ms <= 0:
        raise ValueError(f"step time must be positive, got {step_ms} ms")
    if decode_gpus < 1:
        raise ValueError(f"decode GPUs must be >= 1, got {decode_gpus}")
    return global_batch * accept_len / (step_ms / 1000.0) / decode_gpus


def read_rank_logs(paths: Iterable[str | os.PathLike]) -> dict[int, list[dict]]:
    """All decode, profile and slow_down records of every rank, in file order per rank."""
    by_rank: dict[int, list[dict]] = defaultdict(list)
    found_any = False
    for path in paths:
        for record in iter_log(path):
            found_any = True
            if record["kind"] in (
                "decode",
                "profile_start",
                "profile_stop",
                "profile_done",
                "slow_down",
            ):
                by_rank[rank_key(record)].append(record)
    if not found_any:
        names = ", ".join(str(p) for p in paths) or "(none given)"
        raise InputError(f"no SGLang log lines found in {names}")
    return dict(by_rank)


def profile_ids(by_rank: dict[int, list[dict]]) -> list[str]:
    """Profile ids in the order they first start in the logs."""
    seen: dict[str, float] = {}
    for records in by_rank.values():
        for r in records:
            if r["kind"] == "profile_start" and r.get("profile_id") is not None:
                seen.setdefault(r["profile_id"], r.get("epoch") or 0.0)
    return sorted(seen, key=lambda pid: seen[pid])


def _window(records: list[dict], profile_id: str) -> tuple[int, int] | None:
    """Indexes of this rank's profile start and the end of its window (stop/done/end)."""
    start = next(
        (
            i
            for i, r in enumerate(records)
            if r["kind"] == "profile_start" and r.get("profile_id") == profile_id
        ),
        None,
    )
    if start is None:
        return None
    end = next(
        (
            i
            for i in range(start + 1, len(records))
            if records[i]["kind"] in ("profile_done", "profile_start")
        ),
        None,
    )
    if end is None:
        stop = next(
            (i for i in range(start + 1, len(records)) if records[i]["kind"] == "profile_stop"),
            len(records) - 1,
        )
        end = stop
    return start, end


def _log_step_ms(records: list[dict], start: int, end: int) -> list[float]:
    """Per-step times (ms) the logs imply just before and just after the window."""

    def usable(i: int) -> float | None:
        r = records[i]
        if r["kind"] != "decode" or not r.get("gen_throughput") or not r.get("running_req"):
            return None
        # A line right after a sleep measures the sleep, not a forward.
        if i > 0 and records[i - 1]["kind"] == "slow_down":
            return None
        if i + 1 < len(records) and records[i + 1]["kind"] == "slow_down":
            return None
        return 1000.0 * r["running_req"] / r["gen_throughput"]

    before, i = [], start - 1
    while i >= 0 and len(before) < LOG_WINDOW_LINES and records[i]["kind"] != "profile_done":
        value = usable(i)
        if value is not None:
            before.append(value)
        i -= 1
    after, i = [], end + 1
    while (
        i < len(records) and len(after) < LOG_WINDOW_LINES and records[i]["kind"] != "profile_start"
    ):
        value = usable(i)
        if value is not None:
            after.append(value)
        i += 1
    return before + after


def measure(
    log_paths: Sequence[str | os.PathLike],
    trace_dir: str | os.PathLike,
    decode_gpus: int,
    profile_id: str | None = None,
    dp_size: int | None = None,
    tolerance: float = 0.10,
    spread_ranks: int = 4,
) -> dict:
    """Throughput of one profile snapshot. See the module docstring for the method."""
    by_rank = read_rank_logs(log_paths)
    ids = profile_ids(by_rank)
    if profile_id is None:
        if not ids:
            raise InputError(
                "no 'Profiling starts ... (with profile id: X)' line in "
                + ", ".join(map(str, log_paths))
            )
        profile_id = ids[-1]
    elif profile_id not in ids:
        raise InputError(
            f"profile id {profile_id} does not appear in the logs "
            f"({', '.join(map(str, log_paths))}); found: {', '.join(ids) or 'none'}"
        )
    traces = traces_for(trace_dir, profile_id)
    if not traces:
        raise InputError(f"no trace files of profile {profile_id} in {trace_dir}")

    flags: list[str] = []
    per_rank_batch: dict[int, int] = {}
    batch_source: dict[int, str] = {}
    log_steps: dict[int, list[float]] = {}
    trace_results: dict[int, dict] = {}
    # Read the TP-0 trace (lowest rank) and a few more for spread; all of them when they
    # carry per-step batch sizes is not needed: the log gives every rank's batch.
    trace_ranks = sorted(traces)[: max(1, spread_ranks)]
    for rank in trace_ranks:
        trace_results[rank] = step_time(traces[rank])

    for rank, records in sorted(by_rank.items()):
        window = _window(records, profile_id)
        if window is None:
            continue
        start, end = window
        trace = trace_results.get(rank)
        sizes = trace.get("batch_sizes") if trace else None
        last = next(
            (records[i] for i in range(start, -1, -1) if records[i]["kind"] == "decode"
             and records[i].get("running_req") is not None),
            None,
        )
        latest = next((records[i] for i in range(start, -1, -1)
                       if records[i]["kind"] == "decode"), None)
        if latest is not None and latest is not last:
            # The rank's last batch line before the profile did not read as a count:
            # an older line stands in, and the reader is told.
            flags.append(f"garbled_batch_line_before_profile:dp{rank}")
        if sizes:
            per_rank_batch[rank] = statistics.mode(sizes)
            batch_source[rank] = "trace_step_spans"
            if len(set(sizes)) > 1:
                flags.append(f"batch_changed_in_window:dp{rank}")
            if last is not None and last.get("running_req") != per_rank_batch[rank]:
                # Both sources are SGLang's own; when they disagree the trace counts, and
                # the reader is told.
                flags.append(f"log_batch_differs_from_trace:dp{rank}")
        else:
            if last is None:
                flags.append(f"no_decode_line_before_profile:dp{rank}")
                continue
            per_rank_batch[rank] = int(last["running_req"])
            batch_source[rank] = "log_before_profile_start"
        if any(records[i]["kind"] == "slow_down" for i in range(start, end + 1)):
            flags.append(f"slow_down_in_window:dp{rank}")
        steps = _log_step_ms(records, start, end)
        if steps:
            log_steps[rank] = steps

    # Ranks whose trace we have but whose log we lack still count from the trace.
    for rank, trace in trace_results.items():
        if rank not in per_rank_batch and trace.get("batch_sizes"):
            per_rank_batch[rank] = statistics.mode(trace["batch_sizes"])
            batch_source[rank] = "trace_step_spans"
    if not per_rank_batch:
        raise InputError(
            f"no decode rank has both a profile start for {profile_id} and a batch size "
            f"(logs: {', '.join(map(str, log_paths))})"
        )

    if not any(per_rank_batch.values()):
        raise InputError(
            f"profile {profile_id}: every decode rank had a batch of 0 at the profile "
            f"(logs: {', '.join(map(str, log_paths))}); nothing was decoding, so there is "
            "no throughput to compute")
    expected_ranks = dp_size if dp_size is not None else decode_gpus
    if len(per_rank_batch) != expected_ranks:
        flags.append(f"ranks_found_{len(per_rank_batch)}_of_{expected_ranks}")

    reference_rank = min(trace_results)
    reference = trace_results[reference_rank]
    step_ms = reference["median_ms"]
    global_batch = sum(per_rank_batch.values())
    rank_medians = {r: t["median_ms"] for r, t in trace_results.items()}
    log_rank_ms = {r: statistics.median(v) for r, v in log_steps.items()}
    log_step_ms = statistics.median(log_rank_ms.values()) if log_rank_ms else None
    ratio = step_ms / log_step_ms if log_step_ms else None
    if ratio is not None and abs(ratio - 1.0) > tolerance:
        flags.append("trace_vs_log_step_time")
    batches = list(per_rank_batch.values())
    return {
        "profile_id": profile_id,
        "profile_ids_in_logs": ids,
        "per_rank_batch": {str(r): b for r, b in sorted(per_rank_batch.items())},
        "batch_source": sorted(set(batch_source.values())),
        "ranks": len(per_rank_batch),
        "global_batch": global_batch,
        "rank_batch_min": min(batches),
        "rank_batch_max": max(batches),
        "rank_batch_imbalance": max(batches) / statistics.mean(batches),
        "step_ms": step_ms,
        "step_ms_spread": reference.get("spread"),
        "steps_used": reference["steps"],
        "step_periods_ms": list(reference["step_ms"]),
        "trace_file": str(traces[reference_rank]),
        "trace_rank": reference_rank,
        "rank_step_ms": {str(r): v for r, v in sorted(rank_medians.items())},
        "log_step_ms": log_step_ms,
        "log_rank_step_ms": {str(r): v for r, v in sorted(log_rank_ms.items())},
        "trace_log_ratio": ratio,
        "tolerance": tolerance,
        "decode_gpus": decode_gpus,
        "tokens_per_s_per_gpu": tokens_per_s_per_gpu(global_batch, step_ms, decode_gpus),
        "formula": f"{global_batch} / {step_ms / 1000.0:.6f} s / {decode_gpus} GPUs",
        "method": reference["method"],
        "markers": reference["markers"],
        "flags": flags,
    }
