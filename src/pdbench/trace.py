"""Read torch-profiler (Kineto) traces, ``*.trace.json.gz``, and measure decode step times.

This module is the one place that reads profiler traces. It never holds all events of a trace
in memory: a trace of several GB is read as a stream, and only the few marker events that
delimit scheduler steps are decoded.

Method (the step time that gets published)
------------------------------------------
A *step* is one scheduler forward. The step time is the start-to-start period between
consecutive steps, measured on the CPU timeline of the scheduler process:

1. ``method="step_spans"`` (preferred; SGLang since 2026-04): the CPU-side ``user_annotation``
   spans named ``step[MODE bs=N ...]`` that ``ModelRunner.forward`` records around every
   forward (``step[DECODE bs=64]``, ``step[EXTEND bs=1 toks=167]``, ``step[IDLE bs=0]``; with
   detailed annotations extra ``key=value`` aggregates come before ``]``). The mirrored
   ``gpu_user_annotation`` copies on the GPU timeline (one per GPU stream that ran work
   inside the span) are ignored. Spans are sorted by start
   time; the period of step *i* is ``ts[i+1] - ts[i]``. Only periods that start at a DECODE
   step are decode step times: the period after an EXTEND, MIXED or IDLE step is left out.
   ``batch_sizes`` are the ``bs`` of every DECODE step, the last one included (it has no
   period), and ``modes`` lists the mode of every step in order. A span nested in another
   step span of the same thread is not a step of its own.
2. ``method="run_batch_frames"`` (older SGLang, no step spans), three families tried in
   this order, the first with at least two markers winning:

   a. the scheduler's ``run_batch`` Python frames (``python_function`` events whose name
      ends with ``): run_batch`` and contains ``scheduler``, recorded with ``with_stack``);
   b. the same for a scheduler frame named ``_run_batch_inner`` (a name no SGLang release
      checked so far uses; accepted so a build that splits ``run_batch`` is still timed);
   c. the ``scheduler.run_batch`` ``user_annotation`` spans (SGLang since 2026-06-14) or
      the plain ``run_batch`` spans of the pipeline-parallel event loop.

   Frames and spans nest, so only the outermost matches count: a marker whose interval
   lies inside another of the same family and thread is dropped. Every captured batch
   counts (the trace cannot tell decode from prefill here); ``batch_sizes`` and ``modes``
   are ``None``.
3. ``method="cuda_graph_launch"``: ``cudaGraphLaunch`` events of a runtime category
   (``cuda_runtime``), one per decode step when decode runs in CUDA graphs.
4. ``method="hip_graph_launch"``: the same on ROCm, ``hipGraphLaunch`` (Kineto files HIP
   runtime calls under the same ``cuda_runtime`` activity type; ``hip_runtime`` is
   accepted too). Kernel launches (``hipLaunchKernel``, ``hipModuleLaunchKernel``,
   ``hipExtModuleLaunchKernel``, ``cudaLaunchKernel``) are never markers: a step launches
   many.

The result's ``markers`` names the family that gave the steps (``step spans``,
``run_batch frames``, ``_run_batch_inner frames``, ``run_batch spans``,
``cudaGraphLaunch``, ``hipGraphLaunch``).

Step spans are used whenever the trace has any (a trace with step spans but no DECODE step
followed by another step is an error, not a case for the fallbacks); otherwise the first
fallback with at least two markers is used. ``step_ms`` lists the periods in
milliseconds, in order, and ``median_ms`` is their median. Nothing is dropped: the first
captured period is often truncated (profiling starts in the middle of a step, so on a GB200
decode trace the periods are 58.6, 82.6, 83.7 and 85.5 ms); the median is robust to it, and
it is reported separately as ``first_period_ms``. ``spread`` gives min, max, p10, p90,
quartiles, IQR, the standard deviation and the coefficient of variation of the periods, and
``window_ms`` the time from the first to the last step start. A trace with fewer than two
steps of the chosen kind (no period) is an :class:`~pdbench.errors.InputError`.

Reading
-------
Files are decompressed as a stream (gzip is recognised by its magic bytes; plain JSON is
read as is; a truncated or corrupt gzip stream is an error, never a shorter result). Kineto
writes the event list one event per block, ``\\n  {`` ... ``\\n  }``, after a header. For
that layout a fast path searches each decompressed chunk for the few marker names, cuts out
only the enclosing event block of each hit and decodes that block alone; the unfinished
last event of a chunk is carried into the next one. Any other layout (compact JSON written
by another tool, for instance) is read with ``ijson`` over ``traceEvents.item``.
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
import zlib
from pathlib import Path
from typing import Any, Callable, Iterator

from pdbench.errors import InputError
from pdbench.loglines import rank_key

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "MARKER_KINDS",
    "read_markers",
    "step_time",
    "trace_rank_from_name",
]

DEFAULT_CHUNK_SIZE = 4 << 20
"""Bytes read (and at most produced by decompression) per chunk."""

MARKER_KINDS = (
    "step_spans",
    "gpu_step_spans",
    "run_batch_frames",
    "run_batch_inner_frames",
    "run_batch_spans",
    "cuda_graph_launch",
    "hip_graph_launch",
)
"""Kinds of marker events that :func:`read_markers` returns."""

_GZIP_MAGIC = b"\x1f\x8b"

_STEP_NAME_RE = re.compile(r"step\[(?P<mode>[A-Za-z_]+) bs=(?P<bs>\d+)(?P<rest>[^\]]*)\]")

# Byte strings whose presence in an event block may make it a marker. Every marker name
# contains one of them; the decoded event is then classified exactly by _classify(). Longer
# needles are found faster; Kineto always writes a name as ``"name": "..."``.
_NAME_KEY = b'"name": "'
_NEEDLES = (
    _NAME_KEY + b"step[",
    b'run_batch"',
    b'_run_batch_inner"',
    b'"cudaGraphLaunch"',
    b'"hipGraphLaunch"',
)

# The fallbacks after step spans, in the order they are tried: (marker kind, method
# reported, family named in the result, whether nested markers are dropped).
_FALLBACKS = (
    ("run_batch_frames", "run_batch_frames", "run_batch frames", True),
    ("run_batch_inner_frames", "run_batch_frames", "_run_batch_inner frames", True),
    ("run_batch_spans", "run_batch_frames", "run_batch spans", True),
    ("cuda_graph_launch", "cuda_graph_launch", "cudaGraphLaunch", False),
    ("hip_graph_launch", "hip_graph_launch", "hipGraphLaunch", False),
)

# Kineto's category of runtime API calls: CUDA's, and on ROCm the same activity type
# (roctracer and rocprofiler-sdk report HIP calls as runtime activities).
_RUNTIME_CATEGORIES = frozenset({"cuda_runtime", "hip_runtime"})

_EVENT_START = b"\n  {"
_EVENT_END = b"\n  }"
# Bytes of header searched for "traceEvents" before the fast path gives up.
_HEADER_LIMIT = 64 << 20


def _kineto_list_start(head: bytes) -> int:
    """Index of the ``[`` that opens the event list in Kineto's layout; -1 when more bytes are
    needed to tell, -2 when the file is not in that layout."""
    k = head.find(b'"traceEvents"')
    if k == -1:
        return -1
    line_start = head.rfind(b"\n", 0, k) + 1
    if line_start == 0 or head[line_start:k].strip(b" "):
        return -2
    j = k + len(b'"traceEvents"')
    if len(head) < j + 3:
        return -1
    if head[j : j + 3] != b": [":
        return -2
    list_start = j + 2
    j = list_start + 1
    while j < len(head) and head[j] in b" \n":
        j += 1
    if j + 1 >= len(head):
        return -1
    if head[j] == ord("]"):
        return list_start
    if head[j] == ord("{") and head[j - 3 : j] == b"\n  " and head[j + 1] == ord("\n"):
        # The first event must be complete and name itself the way the needles expect.
        e = head.find(_EVENT_END, j)
        if e == -1:
            return -1
        return list_start if _NAME_KEY in head[j:e] else -2
    return -2


class _NotKineto(Exception):
    """The fast path met something outside Kineto's layout; read the file generically."""


# --------------------------------------------------------------------------------------------
# Decompressed byte stream


def _open_chunks(path: Path, chunk_size: int) -> Iterator[bytes]:
    """Yield the decompressed bytes of *path* in pieces of at most *chunk_size* bytes.

    gzip is detected by its magic bytes (several concatenated members are read in turn);
    anything else is passed through. A gzip stream that ends early or is corrupt raises
    InputError.
    """
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise InputError(f"{path}: trace file not found") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, not a trace file") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read trace file: {e.strerror or e}") from None
    with f:
        first = f.read(max(chunk_size, 2))
        if first[:2] != _GZIP_MAGIC:
            for i in range(0, len(first), chunk_size):
                yield first[i : i + chunk_size]
            data = f.read(chunk_size)
            while data:
                yield data
                data = f.read(chunk_size)
            return
        yield from _gunzip(path, f, first, chunk_size)


def _gunzip(path: Path, f: Any, data: bytes, chunk_size: int) -> Iterator[bytes]:
    d = zlib.decompressobj(31)
    while True:
        if not data:
            data = f.read(chunk_size)
            if not data:
                break
        try:
            out = d.decompress(data, chunk_size)
            if out:
                yield out
            while d.unconsumed_tail:
                out = d.decompress(d.unconsumed_tail, chunk_size)
                if out:
                    yield out
        except zlib.error as e:
            raise InputError(f"{path}: corrupt gzip data ({e})") from None
        data = b""
        if d.eof:
            # Another gzip member may follow; zero padding after the last one is accepted.
            rest = d.unused_data
            while len(rest) < 2:
                more = f.read(chunk_size)
                if not more:
                    break
                rest += more
            if rest[:2] == _GZIP_MAGIC:
                d = zlib.decompressobj(31)
                data = rest
                continue
            while rest:
                if rest.strip(b"\0"):
                    raise InputError(f"{path}: unexpected data after the end of the gzip stream")
                rest = f.read(chunk_size)
            return
    try:
        out = d.flush()  # output still pending inside the decompressor
    except zlib.error as e:
        raise InputError(f"{path}: corrupt gzip data ({e})") from None
    if out:
        yield out
    if not d.eof:
        raise InputError(
            f"{path}: the gzip stream is truncated (the file ends before the end of the trace)"
        )


class _ChunkReader:
    """A minimal file-like ``read()`` over a chunk iterator, for ijson."""

    def __init__(self, chunks: Iterator[bytes]):
        self._chunks = chunks
        self._buf = b""

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            return self._buf + b"".join(self._chunks)
        while len(self._buf) < n:
            nxt = next(self._chunks, None)
            if nxt is None:
                break
            self._buf += nxt
        out, self._buf = self._buf[:n], self._buf[n:]
        return out


# --------------------------------------------------------------------------------------------
# Marker classification


def _classify(ev: Any) -> str | None:
    """Return the marker kind of a decoded event, or None when it is no marker."""
    if not isinstance(ev, dict):
        return None
    name = ev.get("name")
    if not isinstance(name, str):
        return None
    ph = ev.get("ph")
    if ph is not None and ph != "X":
        return None
    # A marker whose time is not a number is still a marker: _check_times refuses the
    # trace, rather than a dropped step silently doubling a period.
    cat = ev.get("cat")
    if name.startswith("step[") and _STEP_NAME_RE.fullmatch(name):
        if cat == "user_annotation":
            return "step_spans"
        if cat == "gpu_user_annotation":
            return "gpu_step_spans"
        return None
    if name.endswith("run_batch"):
        if cat == "python_function" and name.endswith("): run_batch") and "scheduler" in name:
            return "run_batch_frames"
        if cat == "user_annotation" and name in ("scheduler.run_batch", "run_batch"):
            return "run_batch_spans"
        return None
    if name.endswith("): _run_batch_inner"):
        if cat == "python_function" and "scheduler" in name:
            return "run_batch_inner_frames"
        return None
    if cat in _RUNTIME_CATEGORIES:
        if name == "cudaGraphLaunch":
            return "cuda_graph_launch"
        if name == "hipGraphLaunch":
            return "hip_graph_launch"
    return None


def _number(value: Any) -> Any:
    """A JSON number as float; anything else as it is (for _check_times to name)."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        else value


def _marker(ev: dict) -> dict:
    dur = ev.get("dur")
    return {
        "name": ev["name"],
        "cat": ev.get("cat"),
        "ts": _number(ev.get("ts")),
        "dur": 0.0 if dur is None else _number(dur),
        "pid": ev.get("pid"),
        "tid": ev.get("tid"),
    }


# --------------------------------------------------------------------------------------------
# The two readers


def _scan_kineto(path: Path, chunks: Iterator[bytes], emit: Callable[[dict], None]) -> None:
    """Fast path over Kineto's layout. Raises _NotKineto before emitting anything if the
    header does not look like Kineto's, or later if an event block does not decode."""
    # 1. Header: find the start of the event list. Kineto's writers differ in the header's
    # indentation (and torch 2.13 puts one key per line), but every event is a block that
    # starts with "\n  {" and ends with "\n  }".
    head = b""
    list_start = -1
    for chunk in chunks:
        head += chunk
        list_start = _kineto_list_start(head)
        if list_start >= 0:
            break
        if list_start == -2 or len(head) > _HEADER_LIMIT:
            raise _NotKineto
    if list_start < 0:
        raise _NotKineto
    buf = head[list_start:]
    del head

    # 2. Events: process every complete block of the buffer, carry the rest.
    def process(buf: bytes, end: int) -> None:
        seen: set[int] = set()
        for needle in _NEEDLES:
            i = buf.find(needle, 0, end)
            while i != -1:
                s = buf.rfind(_EVENT_START, 0, i)
                if s == -1:
                    raise _NotKineto
                if s not in seen:
                    seen.add(s)
                    e = buf.find(_EVENT_END, i, end + len(_EVENT_END))
                    if e == -1:  # cannot happen: end marks a block end at or after i
                        raise _NotKineto
                    try:
                        ev = json.loads(buf[s + 1 : e + len(_EVENT_END)])
                    except ValueError:
                        raise _NotKineto from None
                    if _classify(ev) is not None:
                        emit(ev)
                i = buf.find(needle, i + 1, end)

    for chunk in chunks:
        buf += chunk
        last = buf.rfind(_EVENT_END)
        if last == -1:
            continue
        # The block ends after "}" (and possibly ","); cutting right after "}" is enough.
        cut = last + len(_EVENT_END)
        process(buf, last)
        buf = buf[cut:]
    last = buf.rfind(_EVENT_END)
    if last != -1:
        process(buf, last)
        buf = buf[last + len(_EVENT_END) :]
    tail = buf.strip()
    # What follows the last event: ``,``? ``]`` then other keys and the closing ``}``.
    if b"]" not in tail or not tail.endswith(b"}"):
        raise InputError(
            f"{path}: the trace is truncated (its JSON ends in the middle of the event list)"
        )


def _scan_generic(path: Path, chunks: Iterator[bytes], emit: Callable[[dict], None]) -> int:
    """Read any JSON layout with ijson; return the number of events seen."""
    import ijson  # imported here: the fast path does not need it

    n = 0
    try:
        for ev in ijson.items(_ChunkReader(chunks), "traceEvents.item", use_float=True):
            n += 1
            if _classify(ev) is not None:
                emit(ev)
    except ijson.JSONError as e:
        detail = e.args[0] if e.args else ""
        if isinstance(detail, bytes):
            detail = detail.decode("utf-8", "replace")
        detail = str(detail).strip()
        msg = detail.splitlines()[0].strip() if detail else type(e).__name__
        raise InputError(f"{path}: not a valid JSON trace ({msg})") from None
    return n


def _has_trace_events_key(path: Path, chunk_size: int) -> bool:
    import ijson

    try:
        for prefix, event, value in ijson.parse(_ChunkReader(_open_chunks(path, chunk_size))):
            if prefix == "" and event == "map_key" and value == "traceEvents":
                return True
    except ijson.JSONError:
        return False
    return False


def _read(
    path: str | os.PathLike, chunk_size: int, layout: str | None
) -> tuple[dict[str, list[dict]], str]:
    path = Path(path)
    if chunk_size < 1:
        raise ValueError("chunk_size must be at least 1")
    found: dict[str, list[dict]] = {k: [] for k in MARKER_KINDS}

    def emit(ev: dict) -> None:
        found[_classify(ev)].append(_marker(ev))  # type: ignore[index]

    used = "kineto"
    if layout in (None, "kineto"):
        try:
            _scan_kineto(path, _open_chunks(path, chunk_size), emit)
        except _NotKineto:
            if layout == "kineto":
                raise InputError(f"{path}: not in the layout torch's profiler writes") from None
            found = {k: [] for k in MARKER_KINDS}
            used = "generic"
    elif layout != "generic":
        raise ValueError(f"unknown layout {layout!r}")
    else:
        used = "generic"
    if used == "generic":
        n = _scan_generic(path, _open_chunks(path, chunk_size), emit)
        if n == 0 and not _has_trace_events_key(path, chunk_size):
            raise InputError(f'{path}: not a profiler trace (no "traceEvents" list)')
    for events in found.values():
        _check_times(str(path), events)
        events.sort(key=lambda m: (m["ts"], -m["dur"]))
    return found, used


def read_markers(
    path: str | os.PathLike, *, chunk_size: int = DEFAULT_CHUNK_SIZE, layout: str | None = None
) -> dict[str, list[dict]]:
    """Return the marker events of a trace, per kind, each sorted by start time.

    Keys are :data:`MARKER_KINDS`: ``step_spans`` (CPU ``user_annotation`` ``step[...]``),
    ``gpu_step_spans`` (their ``gpu_user_annotation`` mirrors), ``run_batch_frames`` (every
    matching ``python_function`` frame, nested ones included), ``run_batch_inner_frames``
    (the same for ``_run_batch_inner``), ``run_batch_spans`` (``scheduler.run_batch`` and
    ``run_batch`` annotations), ``cuda_graph_launch`` and ``hip_graph_launch``. Each event is a
    dict with
    ``name``, ``cat``, ``ts`` and ``dur`` (microseconds, as in the trace), ``pid`` and ``tid``.

    ``layout`` forces a reader: ``"kineto"`` (fast path only) or ``"generic"`` (ijson);
    by default the fast path is tried and the generic reader used when the layout differs.
    Raises InputError for a missing, truncated or non-JSON file or one without ``traceEvents``.
    """
    return _read(path, chunk_size, layout)[0]


# --------------------------------------------------------------------------------------------
# Step times


def _check_times(fname: str, markers: list[dict]) -> None:
    """A step is timed only from sane times: every marker's start and duration finite
    and not negative (a damaged or hand-edited trace would otherwise give a step of
    billions of milliseconds, or NaN)."""
    for m in markers:
        ts, dur = m.get("ts"), m.get("dur", 0.0)
        for what, value in (("timestamp", ts), ("duration", dur)):
            if not isinstance(value, float) or not math.isfinite(value) or value < 0:
                raise InputError(f"{fname}: event {m.get('name', '?')!r} has {what} "
                                 f"{value!r}: not a finite, non-negative time (a damaged "
                                 "trace); no step time is computed from it")


def _check_one_process(fname: str, markers: list[dict]) -> None:
    """One rank's scheduler records its step markers in its own process. Markers of several
    processes mean several ranks in one file (``merge_profiles`` writes ``merged-{id}``
    with each rank's pids relabelled ``[TP00-DP00-EP00] …``): their interleaved steps would
    give meaningless periods."""
    pids = {str(m["pid"]) for m in markers}
    if len(pids) > 1:
        shown = ", ".join(sorted(pids)[:3]) + (", …" if len(pids) > 3 else "")
        raise InputError(
            f"{fname}: step markers come from {len(pids)} processes ({shown}): a trace of "
            "several ranks (e.g. merge_profiles' merged file); time each rank's own trace"
        )


def _outermost(markers: list[dict]) -> list[dict]:
    """Drop every marker whose interval lies inside another marker of the same thread."""
    kept: list[dict] = []
    max_end: dict[tuple, float] = {}
    for m in sorted(markers, key=lambda m: (m["ts"], -m["dur"])):
        key = (str(m["pid"]), str(m["tid"]))
        end = m["ts"] + m["dur"]
        if key in max_end and end <= max_end[key]:
            continue
        kept.append(m)
        max_end[key] = max(end, max_end.get(key, end))
    return kept


def _quantile(sorted_values: list[float], q: float) -> float:
    """Quantile with linear interpolation between order statistics (numpy's default)."""
    if len(sorted_values) == 1:
        return sorted_values[0]
    h = (len(sorted_values) - 1) * q
    lo = math.floor(h)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (h - lo) * (sorted_values[hi] - sorted_values[lo])


def _r(x: float) -> float:
    return round(x, 6)


def _spread(values: list[float]) -> dict[str, float]:
    s = sorted(values)
    mean = statistics.fmean(s)
    std = statistics.pstdev(s) if len(s) > 1 else 0.0
    q1, q3 = _quantile(s, 0.25), _quantile(s, 0.75)
    return {
        "min_ms": _r(s[0]),
        "max_ms": _r(s[-1]),
        "p10_ms": _r(_quantile(s, 0.10)),
        "p90_ms": _r(_quantile(s, 0.90)),
        "q1_ms": _r(q1),
        "q3_ms": _r(q3),
        "iqr_ms": _r(q3 - q1),
        "mean_ms": _r(mean),
        "std_ms": _r(std),
        "cv": round(std / mean, 6) if mean > 0 else 0.0,
    }


def _describe(found: dict[str, list[dict]]) -> str:
    parts = [f"{len(v)} {k.replace('_', ' ')}" for k, v in found.items() if v]
    return ", ".join(parts) if parts else "no step markers at all"


def step_time(
    path: str | os.PathLike, *, chunk_size: int = DEFAULT_CHUNK_SIZE, layout: str | None = None
) -> dict[str, Any]:
    """Measure the decode step time of one trace (see the module docstring for the method).

    Returns ``{"file", "method", "markers", "layout", "steps", "step_ms", "median_ms",
    "first_period_ms", "window_ms", "spread", "batch_sizes", "modes"}``: ``steps`` is the
    number of periods in ``step_ms``; ``batch_sizes`` and ``modes`` are None unless the
    method is ``step_spans``. Raises InputError when the trace holds too few steps.
    """
    found, used = _read(path, chunk_size, layout)  # times checked there
    fname = str(path)

    steps = _outermost(found["step_spans"])
    if steps:
        _check_one_process(fname, steps)
        parsed = []
        for m in steps:
            g = _STEP_NAME_RE.fullmatch(m["name"])
            assert g is not None  # _classify matched the same pattern
            parsed.append((m["ts"], g.group("mode").upper(), int(g.group("bs"))))
        periods = [
            (parsed[i + 1][0] - parsed[i][0]) / 1000.0
            for i in range(len(parsed) - 1)
            if parsed[i][1] == "DECODE"
        ]
        modes = [p[1] for p in parsed]
        batch_sizes: list[int] | None = [p[2] for p in parsed if p[1] == "DECODE"]
        if not periods:
            counts = ", ".join(f"{modes.count(k)} {k}" for k in dict.fromkeys(modes))
            raise InputError(
                f"{fname}: the trace holds too few decode steps to time: need a DECODE step "
                f"span followed by another step, found {len(steps)} step span(s) ({counts})"
            )
        method, markers = "step_spans", "step spans"
        starts = [p[0] for p in parsed]
        modes_out: list[str] | None = modes
    else:
        for kind, method, markers, nested in _FALLBACKS:
            chosen = _outermost(found[kind]) if nested else found[kind]
            if len(chosen) >= 2:
                _check_one_process(fname, chosen)
                break
        else:
            raise InputError(
                f"{fname}: the trace holds too few steps to time (need at least 2 step spans, "
                "run_batch frames or spans, cudaGraphLaunch or hipGraphLaunch events; found "
                f"{_describe(found)})"
            )
        starts = [m["ts"] for m in chosen]
        periods = [(starts[i + 1] - starts[i]) / 1000.0 for i in range(len(starts) - 1)]
        batch_sizes = None
        modes_out = None

    return {
        "file": fname,
        "method": method,
        "markers": markers,
        "layout": used,
        "steps": len(periods),
        "step_ms": [_r(p) for p in periods],
        "median_ms": _r(statistics.median(periods)),
        "first_period_ms": _r(periods[0]),
        "window_ms": _r((starts[-1] - starts[0]) / 1000.0),
        "spread": _spread(periods),
        "batch_sizes": batch_sizes,
        "modes": modes_out,
    }


# --------------------------------------------------------------------------------------------
# File names

_RANK_RE = re.compile(
    r"(?P<head>.*?)-TP-(?P<tp>\d+)"
    r"(?:-DP-(?P<dp>\d+))?(?:-PP-(?P<pp>\d+))?(?:-EP-(?P<ep>\d+))?"
    r"(?:-(?P<stage>ForwardMode\.[A-Z_]+|[A-Za-z_]+|\d+))?"
    r"\.trace\.json(?:\.gz)?"
)
_MERGED_RE = re.compile(r"merged-(?P<id>.+?)\.trace\.json(?:\.gz)?")
_NUMERIC_ID_RE = re.compile(r"(?:(?P<prefix>.+)-)?(?P<id>\d+(?:\.\d+)?)")


def trace_rank_from_name(filename: str | os.PathLike) -> dict[str, Any]:
    """Parse a trace file name as SGLang writes it.

    ``[{prefix}-]{profile_id}-TP-{tp}[-DP-{dp}][-PP-{pp}][-EP-{ep}][-{STAGE}].trace.json.gz``
    gives ``{"prefix", "profile_id", "tp", "dp", "pp", "ep", "stage", "merged": False}`` with
    ranks as int (None where absent) and the stage as written (``ForwardMode.`` dropped);
    ``merged-{profile_id}.trace.json.gz`` gives ``merged: True`` and None ranks.

    The prefix and a client-set profile id are both free text joined by ``-``: when the part
    before ``-TP-`` ends in ``-<number>`` (SGLang's default id is ``time.time()``), that number
    is the id and what precedes it the prefix; otherwise the whole part is the id.
    """
    name = Path(filename).name
    m = _MERGED_RE.fullmatch(name)
    if m:
        return {
            "prefix": None,
            "profile_id": m.group("id"),
            "tp": None,
            "dp": None,
            "pp": None,
            "ep": None,
            "stage": None,
            "merged": True,
        }
    m = _RANK_RE.fullmatch(name)
    if not m or not m.group("head"):
        raise InputError(
            f"{name}: not a profiler trace file name "
            "([prefix-]profile_id-TP-n[-DP-n][-PP-n][-EP-n][-STAGE].trace.json.gz)"
        )
    head = m.group("head")
    idm = _NUMERIC_ID_RE.fullmatch(head)
    if idm:
        prefix, profile_id = idm.group("prefix"), idm.group("id")
    else:
        prefix, profile_id = None, head
    stage = m.group("stage")
    if stage is not None and stage.startswith("ForwardMode."):
        stage = stage[len("ForwardMode.") :]

    def num(k: str) -> int | None:
        v = m.group(k)  # type: ignore[union-attr]
        return int(v) if v is not None else None

    return {
        "prefix": prefix,
        "profile_id": profile_id,
        "tp": num("tp"),
        "dp": num("dp"),
        "pp": num("pp"),
        "ep": num("ep"),
        "stage": stage,
        "merged": False,
    }


def traces_for(trace_dir: str | os.PathLike, profile_id: str) -> dict[int, Path]:
    """The decode trace file of each rank for one profile id: the whole-capture file
    (no stage) or the by-stage ``-DECODE`` one. Other names are not rank traces: a
    writer's temporary file, an ``-EXTEND`` capture, and the ``merged-{id}`` file that
    ``merge_profiles`` makes of all ranks (its events carry every rank at once)."""
    directory = Path(trace_dir)
    if not directory.is_dir():
        raise InputError(f"trace directory {directory} does not exist or is not a directory")
    found: dict[int, Path] = {}
    for path in sorted(directory.rglob("*.trace.json*")):
        try:
            rank = trace_rank_from_name(path.name)
        except (InputError, ValueError):
            continue
        if rank["merged"]:
            continue
        if rank.get("profile_id") != profile_id or rank.get("stage") not in (
            None,
            "DECODE",
            "decode",
        ):
            continue
        found.setdefault(rank_key(rank), path)
    return found

