"""The SGLang log grammar: the one place that knows what an SGLang log line looks like.

``parse_line`` turns one line into a record (a plain dict) or ``None``; ``iter_log``
reads a whole log, plain or gzip-compressed, and yields the records of the lines it
recognises.  Everything else in pdbench reads SGLang logs through these two functions.

Lines
-----
A recognised line is ``[<date> <time>[.mmm][ <RANK>…]] <message>``, optionally preceded
by ``<epoch seconds> `` (the arrival time that a timestamping pipe such as
``server_ts.log`` adds).  Text before the bracket (a progress bar ending in ``\\r`` that
the log record was glued to) is skipped.  Lines without the bracket prefix (Python
warnings, tracebacks, NCCL/Gloo output) and bracketed lines whose message is not one of
the kinds below give ``None``.

Kinds (``KINDS``)
-----------------
``decode``         ``Decode batch[ [iter]][.|,] label: value, …`` (every dialect since v0.4.6)
``prefill``        ``Prefill batch[ [iter]][.|,] label: value, …``
``profile_start``  ``Profiling starts[ for STAGE]. Traces will be saved to: DIR (with profile id: ID)``
                   and the v0.4.6.post2 form ``(with id ID)``
``profile_stop``   ``Stop profiling...`` / ``Stop profiling-STAGE...``
``profile_done``   ``Profiling done. Traces are saved to: DIR[ Merged trace: … | Merge failed: …]``
``slow_down``      ``Scheduler.run_batch sleep {t}s``
``ready``          ``The server is fired up and ready to roll!``

Record keys
-----------
Every record has:

``kind``      one of ``KINDS``
``time``      the bracket timestamp exactly as printed (``"2025-11-22 18:24:26"`` or, with
              ``SGLANG_LOG_MS=1``, ``"2025-11-22 18:24:26.123"``)
``epoch``     that timestamp as POSIX seconds.  SGLang prints the server's local wall
              clock without a zone; the value here reads it as if it were UTC so that it
              is the same on every machine.  It is the log's wall clock, not true UTC:
              compare epochs of logs written in the same time zone only.
``arrival``   float from a leading ``<epoch> `` prefix, else ``None``
``dp``, ``tp``, ``ep``, ``pp``, ``attn_cp``, ``moe_dp``
              the rank tokens of the prefix (``DP3`` → ``dp=3``), ``None`` when absent;
              the tokens may come in any order.  An unknown token ``FOO7`` adds ``foo=7``.

``iter_log`` adds ``file`` (the path as a string) and ``line`` (1-based line number,
counting ``\\n`` only, as ``grep -n`` does).

Batch lines (``decode``, ``prefill``) add ``iter`` (int from ``[iter]`` or ``None``) and
one key per ``label: value`` pair of the body, by name, never by position.  Known
labels map as in ``FIELD_NAMES``; an unknown label is slugified to snake_case (``#foo
bar-baz`` → ``foo_bar_baz``).  Values are ``int``, ``float``, ``bool`` or, for
``timestamp`` and values that are none of these, ``str``; ``fwd occupancy: 87.5%`` gives
``87.5`` (``nan%`` gives ``nan``).  ``cuda graph`` / ``cpu graph`` / ``npu graph`` /
``musa graph`` all give ``cuda_graph`` (bool) plus ``graph_backend`` (``"cuda"``, ``"cpu"``,
…).  A field appears only when the line prints it: there is ``#token`` on a plain pool
but ``#full token``/``#swa token`` on hybrid pools, ``#prealloc-req`` only on PD decode,
and so on.

``profile_start``: ``stage`` (``None`` or as printed, e.g. ``"DECODE"``), ``output_dir``,
``profile_id`` (string exactly as printed).  ``profile_stop``: ``stage``.
``profile_done``: ``output_dir``, ``merge_message`` (the text SGLang appends after the
directory, stripped, or ``None``), ``merged_trace`` (path of the merged trace or
``None``).  ``slow_down``: ``sleep_s`` (float).

Not covered: logs written with ``SGLANG_LOGGING_CONFIG_PATH`` (a custom format).
"""

from __future__ import annotations

import datetime as _dt
import gzip
import os
import re
import zlib
from collections.abc import Iterator

from pdbench.errors import InputError

__all__ = ["FIELD_NAMES", "KINDS", "iter_log", "parse_line"]

KINDS = ("decode", "prefill", "profile_start", "profile_stop", "profile_done", "slow_down", "ready")

# ---------------------------------------------------------------------------------------
# Prefix and timestamp

# Optional arrival epoch, then "[YYYY-MM-DD HH:MM:SS[.mmm][ TOKEN…]] ".
_HEAD = re.compile(
    r"(?:(\d+(?:\.\d*)?) )?"
    r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)([.,]\d+)?((?: [A-Z][A-Z_]*\d+)*)\] "
)
_HEAD_ANYWHERE = re.compile(
    r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)([.,]\d+)?((?: [A-Z][A-Z_]*\d+)*)\] "
)
_ARRIVAL = re.compile(r"(\d+(?:\.\d*)?) ")
_RANK_TOKEN = re.compile(r"([A-Z][A-Z_]*?)(\d+)")

_RANK_KEYS = ("dp", "tp", "ep", "pp", "attn_cp", "moe_dp")
_NO_RANKS: dict = dict.fromkeys(_RANK_KEYS)

_prefix_cache: dict[str, dict] = {"": _NO_RANKS}
_second_cache: dict[str, float] = {}
_UTC = _dt.timezone.utc


def _ranks(prefix: str) -> dict:
    ranks = _prefix_cache.get(prefix)
    if ranks is None:
        ranks = dict(_NO_RANKS)
        for name, num in _RANK_TOKEN.findall(prefix):
            ranks[name.lower()] = int(num)
        if len(_prefix_cache) > 4096:
            _prefix_cache.clear()
            _prefix_cache[""] = _NO_RANKS
        _prefix_cache[prefix] = ranks
    return ranks


def _epoch(second: str, frac: str | None) -> float:
    base = _second_cache.get(second)
    if base is None:
        base = _dt.datetime(
            int(second[0:4]),
            int(second[5:7]),
            int(second[8:10]),
            int(second[11:13]),
            int(second[14:16]),
            int(second[17:19]),
            tzinfo=_UTC,
        ).timestamp()
        if len(_second_cache) > 65536:
            _second_cache.clear()
        _second_cache[second] = base
    if frac:
        digits = frac[1:]
        return base + int(digits) / 10 ** len(digits)
    return base


# ---------------------------------------------------------------------------------------
# Batch line fields


def _to_bool(value: str) -> bool:
    value = value.strip()
    if value == "True":
        return True
    if value == "False":
        return False
    raise ValueError(value)


def _to_percent(value: str) -> float:
    value = value.strip()
    if value.endswith("%"):
        value = value[:-1]
    return float(value)


def _to_str(value: str) -> str:
    value = value.strip()
    if not value:
        raise ValueError(value)
    return value


def _graph(value: str) -> bool:  # marker: the label names the graph backend
    return _to_bool(value)


_INT_LABELS = {
    "#running-req": "running_req",
    "#token": "token",
    "#full token": "full_token",
    "#swa token": "swa_token",
    "#prealloc-req": "prealloc_req",
    "#transfer-req": "transfer_req",
    "#host-receive-req": "host_receive_req",
    "#retracted-req": "retracted_req",
    "#queue-req": "queue_req",
    "#new-seq": "new_seq",
    "#new-token": "new_token",
    "#cached-token": "cached_token",
    "#pending-token": "pending_token",
    "#replay-token": "replay_token",
    "#bootstrap-req": "bootstrap_req",
    "#inflight-req": "inflight_req",
    "#optimistic-req": "optimistic_req",
    "#unbootstrapped-req": "unbootstrapped_req",
    "#transferring-req": "transferring_req",
}
_FLOAT_LABELS = {
    "token usage": "token_usage",
    "full token usage": "full_token_usage",
    "swa token usage": "swa_token_usage",
    "accept len": "accept_len",
    "accept rate": "accept_rate",
    "pre-allocated usage": "pre_allocated_usage",
    "gen throughput (token/s)": "gen_throughput",
    "input throughput (token/s)": "input_throughput",
    "est. decode TFLOPS/s (per GPU)": "est_decode_tflops_per_gpu",
    "est. prefill TFLOPS/s (per GPU)": "est_prefill_tflops_per_gpu",
}
_GRAPH_LABELS = ("cuda graph", "cpu graph", "npu graph", "musa graph", "xpu graph", "hpu graph")

#: Known labels of the batch lines and the record key each becomes.
FIELD_NAMES: dict[str, str] = {
    **_INT_LABELS,
    **_FLOAT_LABELS,
    **dict.fromkeys(_GRAPH_LABELS, "cuda_graph"),
    "fwd occupancy": "fwd_occupancy",
    "timestamp": "timestamp",
}

_KNOWN: dict[str, tuple[str, object]] = {}
_KNOWN.update({label: (key, int) for label, key in _INT_LABELS.items()})
_KNOWN.update({label: (key, float) for label, key in _FLOAT_LABELS.items()})
_KNOWN.update({label: ("cuda_graph", _graph) for label in _GRAPH_LABELS})
_KNOWN["fwd occupancy"] = ("fwd_occupancy", _to_percent)
_KNOWN["timestamp"] = ("timestamp", _to_str)

# Keys a body field must never overwrite.
_RESERVED = frozenset(("kind", "time", "epoch", "arrival", "iter", "file", "line", "graph_backend"))

# "label: value" pairs where separators may be ", " or only a space (the old prefill
# tail "#transferring-req: 0 input throughput (token/s): 1.00 ").
_PAIR = re.compile(r"\s*([^\s:,][^:,]*?)\s*:\s+([^\s,]+)")
_SLUG = re.compile(r"[^0-9a-z]+")
_slug_cache: dict[str, str] = {}


def _slug(label: str) -> str:
    key = _slug_cache.get(label)
    if key is None:
        key = _SLUG.sub("_", label.lower()).strip("_") or "field"
        if key in _RESERVED or key in _RANK_KEYS:
            key = "field_" + key
        _slug_cache[label] = key
    return key


def _coerce(value: str):
    value = value.strip()
    try:
        return int(value)
    except ValueError:
        pass
    try:
        return float(value)
    except ValueError:
        pass
    if value == "True":
        return True
    if value == "False":
        return False
    if value.endswith("%"):
        try:
            return float(value[:-1])
        except ValueError:
            pass
    return value


def _put(rec: dict, label: str, value: str) -> None:
    """Store one pair, known or not (the slow path)."""
    spec = _KNOWN.get(label)
    if spec is not None:
        key, conv = spec
        try:
            if conv is _graph:
                rec["cuda_graph"] = _to_bool(value)
                rec["graph_backend"] = label[:-6]
            else:
                rec[key] = conv(value)
            return
        except ValueError:
            rec[key] = _coerce(value)
            return
    if label.endswith(" graph"):
        try:
            rec["cuda_graph"] = _to_bool(value)
            rec["graph_backend"] = _slug(label[:-6])
            return
        except ValueError:
            pass
    rec[_slug(label)] = _coerce(value)


def _parse_body(body: str, rec: dict) -> bool:
    """Add the body's fields to ``rec``; False when the body holds no pair at all."""
    found = False
    known = _KNOWN
    for seg in body.split(", "):
        label, sep, value = seg.partition(": ")
        spec = known.get(label)
        if spec is not None:
            key, conv = spec
            try:
                if conv is _graph:
                    rec["cuda_graph"] = _to_bool(value)
                    rec["graph_backend"] = label[:-6]
                else:
                    rec[key] = conv(value)
                found = True
                continue
            except ValueError:
                pass
        # Slow path: unknown label, "PD: " prefix, pairs joined by a bare space.
        if not seg or seg.isspace():
            continue
        if seg.startswith("PD: "):
            seg = seg[4:]
        for m in _PAIR.finditer(seg):
            _put(rec, m.group(1), m.group(2))
            found = True
    return found


# ---------------------------------------------------------------------------------------
# Other messages

_PROFILE_START = re.compile(
    r"Profiling starts(?: for (.+?))?\. Traces will be saved to: (.*) \(with (?:profile id: |id )(.*)\)$"
)
_PROFILE_STOP = re.compile(r"Stop profiling(?:-(.+?))?\.\.\.$")
_PROFILE_DONE = "Profiling done. Traces are saved to: "
_MERGED = " Merged trace: "
_MERGE_FAILED = " Merge failed"
_MERGED_TAIL = re.compile(r" \(Events: [^()]*\)$")
_SLEEP = re.compile(r"Scheduler\.run_batch sleep (\S+?)s$")
_READY = "The server is fired up and ready to roll!"


def _parse_message(msg: str, rec: dict) -> dict | None:
    c = msg[:1]
    if c == "D":
        if msg.startswith("Decode batch"):
            rec["kind"] = "decode"
            return _parse_batch(msg, 12, rec)
    elif c == "P":
        if msg.startswith("Prefill batch"):
            rec["kind"] = "prefill"
            return _parse_batch(msg, 13, rec)
        if msg.startswith("Profiling starts"):
            m = _PROFILE_START.match(msg.rstrip())
            if m is None:
                return None
            rec["kind"] = "profile_start"
            rec["stage"] = m.group(1)
            rec["output_dir"] = m.group(2)
            rec["profile_id"] = m.group(3)
            return rec
        if msg.startswith(_PROFILE_DONE):
            rest = msg[len(_PROFILE_DONE) :].rstrip()
            cut = [i for i in (rest.find(_MERGED), rest.find(_MERGE_FAILED)) if i >= 0]
            merge_message = merged_trace = None
            if cut:
                i = min(cut)
                merge_message = rest[i:].strip()
                if rest.startswith(_MERGED, i):
                    merged_trace = _MERGED_TAIL.sub("", rest[i + len(_MERGED) :]).strip()
                rest = rest[:i]
            rec["kind"] = "profile_done"
            rec["output_dir"] = rest
            rec["merge_message"] = merge_message
            rec["merged_trace"] = merged_trace
            return rec
    elif c == "S":
        if msg.startswith("Scheduler.run_batch sleep "):
            m = _SLEEP.match(msg.rstrip())
            if m is None:
                return None
            try:
                rec["sleep_s"] = float(m.group(1))
            except ValueError:
                return None
            rec["kind"] = "slow_down"
            return rec
        if msg.startswith("Stop profiling"):
            m = _PROFILE_STOP.match(msg.rstrip())
            if m is None:
                return None
            rec["kind"] = "profile_stop"
            rec["stage"] = m.group(1)
            return rec
    elif c == "T":
        if msg.rstrip() == _READY:
            rec["kind"] = "ready"
            return rec
    return None


def _parse_batch(msg: str, n: int, rec: dict) -> dict | None:
    rest = msg[n:]
    iteration = None
    if rest.startswith(" ["):
        end = rest.find("]", 2)
        if end < 0:
            return None
        try:
            iteration = int(rest[2:end])
        except ValueError:
            return None
        rest = rest[end + 1 :]
    if not rest or rest[0] not in ".,: ":
        return None
    rec["iter"] = iteration
    if not _parse_body(rest.lstrip(".,: ").rstrip("\r\n"), rec):
        return None
    return rec


# ---------------------------------------------------------------------------------------
# Public API


def parse_line(line: str) -> dict | None:
    """Parse one SGLang log line; ``None`` when it is not one of ``KINDS``.

    The line may keep its trailing newline.  See the module docstring for the keys.
    """
    # Cheap literal pre-check: every kind's message contains one of these.
    if "batch" not in line and "rofiling" not in line and "fired up" not in line:
        return None
    m = _HEAD.match(line)
    if m is not None:
        arrival, second, frac, prefix = m.groups()
        msg = line[m.end() :]
    else:
        # The record may follow other output on the same line (a progress bar).
        m = _HEAD_ANYWHERE.search(line)
        if m is None:
            return None
        second, frac, prefix = m.groups()
        a = _ARRIVAL.match(line)
        arrival = a.group(1) if a is not None else None
        msg = line[m.end() :]
    if msg.endswith("\n"):
        msg = msg.rstrip("\r\n")
    rec = {
        "kind": None,
        "time": second + frac if frac else second,
        "epoch": _epoch(second, frac),
        "arrival": float(arrival) if arrival is not None else None,
    }
    rec.update(_ranks(prefix) if prefix else _NO_RANKS)
    return _parse_message(msg, rec)


_SNIFF_BYTES = 1 << 16
_GZIP_MAGIC = b"\x1f\x8b"


def _is_gzip(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == _GZIP_MAGIC


def _check_text(path: str, sample: bytes) -> None:
    if b"\x00" in sample:
        raise InputError(f"{path}: not a text log (it contains NUL bytes)")
    text = sample.decode("utf-8", errors="replace")
    bad = text.count("\ufffd") - sample.count(b"\xef\xbf\xbd")
    if bad > max(8, len(sample) // 100):
        raise InputError(f"{path}: not a text log (it is not UTF-8 text)")


def iter_log(path: str | os.PathLike) -> Iterator[dict]:
    """Yield the records of every recognised line of the log at ``path``.

    ``path`` may be plain text or gzip (recognised by its magic bytes, not its name).
    Each record gets ``file`` (``str(path)``) and ``line`` (1-based).  Raises
    ``InputError`` naming the file when it is missing, a directory, unreadable, not
    text, or a gzip stream that is corrupt or truncated.
    """
    name = os.fspath(path)
    if not isinstance(name, str):
        name = os.fsdecode(name)
    if not os.path.exists(name):
        raise InputError(f"{name}: no such file")
    if os.path.isdir(name):
        raise InputError(f"{name}: is a directory, not a log file")
    try:
        compressed = _is_gzip(name)
        opener = gzip.open if compressed else open
        with opener(name, "rb") as raw:
            _check_text(name, raw.read(_SNIFF_BYTES))
        f = (
            gzip.open(name, "rt", encoding="utf-8", errors="replace", newline="\n")
            if compressed
            else open(name, encoding="utf-8", errors="replace", newline="\n")
        )
    except InputError:
        raise
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(f"{name}: cannot read log: {exc}") from exc
    parse = parse_line
    with f:
        n = 0
        try:
            for n, line in enumerate(f, 1):  # noqa: B007
                rec = parse(line)
                if rec is not None:
                    rec["file"] = name
                    rec["line"] = n
                    yield rec
        except (OSError, EOFError, zlib.error) as exc:
            what = "truncated or corrupt gzip" if compressed else "read error"
            raise InputError(f"{name}: {what} after line {n}: {exc}") from exc
