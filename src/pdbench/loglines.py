"""The SGLang log grammar: the one place that knows what an SGLang log line looks like.

``parse_line`` turns one line into a record (a plain dict) or ``None``; ``iter_log``
reads a whole log, plain or gzip-compressed, and yields the records of the lines it
recognises.  Everything else in pdbench reads SGLang logs through these two functions.

Lines
-----
A line is read in three layers (docs/sglang-formats.md §2, "Prefix"):

1. ANSI colour codes are removed, then any number of launcher wrappers (``WRAPPERS``):
   an arrival epoch (``server_ts.log``), ``srun --label``'s ``12: ``, Ray's ``(Actor
   pid=…, ip=…) ``, a tee/ts timestamp (ISO ``2026-01-01T12:00:00.1Z `` or ``[2026-01-01
   12:00:00] `` before another timestamp, or ``ts``'s ``Jan 01 12:00:00 ``);
2. one prefix of the table ``PREFIXES``: SGLang's ``[<date> <time>[.mmm][ <RANK>…]] ``,
   ``[<date> <time>][file.py:line][LEVEL]: ``, the logging-config example
   ``<date> <time> LEVEL PID [file.py:line] ``, or none at all; then uvicorn's level column
   ``INFO:     `` if present;
3. the message, one of the kinds below.

A record glued after other output (a progress bar ending in ``\\r``) is found by its
standard prefix.  Everything else (Python warnings, tracebacks, NCCL output, messages of
other kinds) gives ``None``.  The standard prefix takes a compiled layout per batch line
layout (``_Plan``): the common path costs one regex match per line.

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
``eplb_rebalance_start``  ``[EPLBManager] rebalance start`` (online EPLB, every rank)
``eplb_rebalance_end``    ``[EPLBManager] rebalance end[ time=S s]`` (adds ``seconds``, or None)

Record keys
-----------
Every record has:

``kind``      one of ``KINDS``
``time``      the prefix's timestamp exactly as printed (``"2025-11-22 18:24:26"`` or, with
              ``SGLANG_LOG_MS=1``, ``"2025-11-22 18:24:26.123"``); ``None`` without prefix
``epoch``     that timestamp as POSIX seconds.  SGLang prints the server's local wall
              clock without a zone; the value here reads it as if it were UTC so that it
              is the same on every machine.  It is the log's wall clock, not true UTC:
              compare epochs of logs written in the same time zone only.
``arrival``   the outermost wrapper's time as POSIX seconds (an epoch as is, a zone-less
              time read as UTC), else ``None``
``dp``, ``tp``, ``ep``, ``pp``, ``attn_cp``, ``moe_dp``
              the rank tokens of the prefix (``DP3`` → ``dp=3``), ``None`` when absent;
              the tokens may come in any order.  An unknown token ``FOO7`` adds ``foo=7``.

``iter_log`` adds ``file`` (the path as a string) and ``line`` (1-based line number,
counting ``\\n`` only, as ``grep -n`` does).

Batch lines (``decode``, ``prefill``) add ``iter`` (int from ``[iter]`` or ``None``) and
one key per ``label: value`` pair of the body, by name, never by position.  Known
labels map as in ``FIELD_NAMES``.  A label SGLang never prints, printed twice, or cut
before its value (an interleaved write garbled the line: ``#running-rq: 5``, ``#runn``
followed by another process's record, whose text is dropped) never becomes a field: it
goes to ``unknown_fields`` ({label as printed: value as printed, ``""`` if none});
``field_problems`` counts them.  A value that is no count or finite rate goes to
``invalid_fields`` ({key: value as printed}).  Values are ``int``, ``float``, ``bool`` or
``str`` (``timestamp``); ``fwd occupancy: 87.5%`` gives ``87.5``.  ``cuda graph`` /
``cpu graph`` / ``npu graph`` / ``musa graph`` all give ``cuda_graph`` (bool) plus
``graph_backend`` (``"cuda"``, ``"cpu"``, …).  A field appears only when the line prints
it, with one exception: hybrid KV pools log ``#full token``/``full token usage`` with
``#swa token``/``swa token usage``, ``mamba num``/``mamba usage`` or HiSparse's
``#gpu token``/``#cpu token`` instead of ``#token``/``token usage``; every pool is kept
by name, and ``token``/``token_usage`` are filled from the full-attention pool (else
HiSparse's device pool) so that every consumer finds them on every model.

``profile_start``: ``stage`` (``None`` or as printed, e.g. ``"DECODE"``), ``output_dir``,
``profile_id`` (string exactly as printed).  ``profile_stop``: ``stage``.
``profile_done``: ``output_dir``, ``merge_message`` (the text SGLang appends after the
directory, stripped, or ``None``), ``merged_trace`` (path of the merged trace or
``None``).  ``slow_down``: ``sleep_s`` (float).

Not covered: other ``SGLANG_LOGGING_CONFIG_PATH`` formats than the two in ``PREFIXES``.
"""

from __future__ import annotations

import datetime as _dt
import gzip
import math
import os
import re
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

from pdbench.errors import InputError

__all__ = [
    "FIELD_NAMES",
    "KINDS",
    "PREFIXES",
    "WRAPPERS",
    "LogFollower",
    "field_problems",
    "iter_log",
    "parse_line",
    "rank_key",
]

KINDS = ("decode", "prefill", "profile_start", "profile_stop", "profile_done", "slow_down", "ready",
         "eplb_rebalance_start", "eplb_rebalance_end", "cache_flushed", "cache_not_flushed",
         "request_refused")

# ---------------------------------------------------------------------------------------
# Prefix and timestamp

# The standard head, "[YYYY-MM-DD HH:MM:SS[.mmm][ TOKEN…]] ", behind an optional arrival
# epoch.  Compiled layouts of batch lines (_Plan) start with it: it is the common path.
_HEAD_PATTERN = (
    r"(?:(\d+(?:\.\d*)?) )?"
    r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)([.,]\d+)?((?: [A-Z][A-Z_]*\d+)*)\] "
)
# A line without prefix: the same groups, never matched (all None).
_NO_HEAD_PATTERN = r"(?:()()()()(?!))?"
_HEAD_ANYWHERE = re.compile(
    r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)([.,]\d+)?((?: [A-Z][A-Z_]*\d+)*)\] "
)
_RANK_TOKEN = re.compile(r"([A-Z][A-Z_]*?)(\d+)")

_DATE_TIME = r"(?P<s>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)(?P<f>[.,]\d+)?"
_RANK_TOKENS = r"(?P<p>(?: [A-Z][A-Z_]*\d+)*)"
_LEVEL = r"(?:DEBUG|INFO|WARNING|ERROR|CRITICAL)"

#: The line prefixes SGLang's loggers write, tried in this order on a line whose launcher
#: wrappers (``WRAPPERS``) are already removed: (name, pattern, where it comes from).
#: Each pattern may name the groups ``s`` (date and time), ``f`` (fraction of a second,
#: with its separator) and ``p`` (the rank tokens, `` DP0 TP0 EP0``).  After any of them
#: may come uvicorn's level column (``INFO:     ``), which is skipped too.
PREFIXES: tuple[tuple[str, str, str], ...] = (
    ("sglang", rf"\[{_DATE_TIME}{_RANK_TOKENS}\] ",
     "configure_logger: [%(asctime)s{.%(msecs)03d with SGLANG_LOG_MS}{ DPx TPy EPz}]"),
    ("sglang-file-level", rf"\[{_DATE_TIME}{_RANK_TOKENS}\]\[[^\]\s]+:\d+\]\[{_LEVEL}\]:? ?",
     "[%(asctime)s][%(filename)s:%(lineno)d][%(levelname)s]: (a logging config file)"),
    ("logging-config-example",
     rf"{_DATE_TIME} {_LEVEL} \d+ \[ ?(?P<p>(?:[A-Z][A-Z_]*\d+ )*)[^\]\s]+:\d+\] ",
     "%(asctime)s %(levelname)s %(process)d [{ranks }%(filename)s:%(lineno)d] (#4592's example)"),
    ("sglang-time-only", r"\[(?P<t>\d\d:\d\d:\d\d)(?P<f>[.,]\d+)?(?P<p>(?: [A-Z][A-Z_]*\d+)*)\] ",
     "configure_logger before 2024-10-16 (2782132be, #1679): datefmt %H:%M:%S, no date"),
    ("none", "", "no formatter: the message alone"),
)
_LEVEL_COLUMN = re.compile(rf"{_LEVEL}: +")
_PREFIX_REGEXES = tuple((name, re.compile(pattern)) for name, pattern, _why in PREFIXES)

#: What launchers and capture tools put in front of SGLang's prefix, removed from the start
#: of a line in any order and any number (ANSI colour codes are removed everywhere first):
#: (name, pattern, example).  A group ``a`` is the arrival time of the line (epoch
#: seconds), ``iso`` and ``bt`` a date and time it was written down.
WRAPPERS: tuple[tuple[str, str, str], ...] = (
    ("arrival-epoch", r"(?P<a>\d+(?:\.\d*)?) ", "1763835866.123456 "),
    ("srun-label", r" *\d+: ", "srun --label: '0: ', ' 12: '"),
    ("ray-actor", r"\([\w.-]+ pid=\d+(?:, ip=[\d.]+)?\) +",
     "(SGLangEngine pid=1234, ip=10.0.0.1) "),
    ("iso-time", r"(?P<iso>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:[.,]\d+)?(?:Z|[+-]\d\d:?\d\d)?) +",
     "2026-01-01T12:00:00.123456Z "),
    ("bracket-time",
     r"\[(?P<bt>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:[.,]\d+)?)\] +(?=\[?\d{4}-\d\d-\d\d[ T]|\d+: |\()",
     "[2026-01-01 12:00:00] before another timestamped prefix"),
    ("ts-default", r"[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d(?:\.\d+)? +", "ts: 'Jan 01 12:00:00 '"),
)
_WRAPPER = re.compile("|".join(f"(?:{pattern})" for _name, pattern, _example in WRAPPERS))
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")

_RANK_KEYS = ("dp", "tp", "ep", "pp", "attn_cp", "moe_dp")
_NO_RANKS: dict = dict.fromkeys(_RANK_KEYS)

_prefix_cache: dict[str, dict] = {"": _NO_RANKS}
_NO_RANK_VALUES = (None, None, None, None, None, None, None)
_prefix_values_cache: dict[str, tuple] = {"": _NO_RANK_VALUES}
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


def _rank_values(prefix: str) -> tuple:
    """(dp, tp, ep, pp, attn_cp, moe_dp, {other tokens} or None) of a prefix."""
    values = _prefix_values_cache.get(prefix)
    if values is None:
        ranks = _ranks(prefix)
        other = {k: v for k, v in ranks.items() if k not in _NO_RANKS} or None
        values = (*(ranks[k] for k in _RANK_KEYS), other)
        if len(_prefix_values_cache) > 4096:
            _prefix_values_cache.clear()
            _prefix_values_cache[""] = _NO_RANK_VALUES
        _prefix_values_cache[prefix] = values
    return values


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
#
# A body is a sequence of "label: value" pairs.  The general path splits it on ", "
# and reads each segment with _PAIR (which also copes with pairs separated by a bare
# space, as in the old prefill tail "#transferring-req: 0 input throughput (token/s):
# 1.00 ", and with the v0.4.6 "PD: " prefix).  Because one log repeats a handful of
# line layouts millions of times, the first line of each layout also compiles a
# _Plan: one anchored regex for the whole line with the labels as literals, and the
# conversions per group.  Later lines of that layout take a single regex match.

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
    "mamba num": "mamba_num",
    "#gpu token": "gpu_token",
    "#cpu token": "cpu_token",
    "#gpu-token": "gpu_token",  # the spelling of #22331's own description (2026-04-08)
    "#cpu-token": "cpu_token",
    "waiting-image-req": "waiting_image_req",
    "largest-len": "largest_len",  # speculative decoding, 2025-03-03 (#3988) to 03-16 (#4363)
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
    "est. read BW (GB/s per GPU)": "est_read_bw_gb_s_per_gpu",
    "est. write BW (GB/s per GPU)": "est_write_bw_gb_s_per_gpu",
    "mamba usage": "mamba_usage",
    "gpu token usage": "gpu_token_usage",
    "cpu token usage": "cpu_token_usage",
    "cap len": "cap_len",
    "block accept len": "block_accept_len",
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

# Value kinds.
_INT, _FLOAT, _PERCENT, _GRAPH, _STR, _UNKNOWN = range(6)

_KNOWN: dict[str, tuple[str, int]] = {}
_KNOWN.update({label: (key, _INT) for label, key in _INT_LABELS.items()})
_KNOWN.update({label: (key, _FLOAT) for label, key in _FLOAT_LABELS.items()})
_KNOWN.update({label: ("cuda_graph", _GRAPH) for label in _GRAPH_LABELS})
_KNOWN["fwd occupancy"] = ("fwd_occupancy", _PERCENT)
_KNOWN["timestamp"] = ("timestamp", _STR)

# Keys a body field must never overwrite.
_RESERVED = frozenset(("kind", "time", "epoch", "arrival", "iter", "file", "line", "graph_backend"))

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


def _count(value: str) -> int:
    """A count as SGLang logs it: a non-negative integer (ValueError otherwise)."""
    number = int(value)
    if number < 0:
        raise ValueError(value)
    return number


def _real(value: str) -> float:
    """A rate, usage or time as SGLang logs it: finite and not negative."""
    number = float(value)
    if not 0.0 <= number < math.inf:  # NaN fails too
        raise ValueError(value)
    return number


def _unknown(rec: dict, label: str, value: str) -> tuple[str, int]:
    rec.setdefault("unknown_fields", {})[label] = value
    return label, _UNKNOWN


def _store(rec: dict, label: str, value: str, seen: set) -> tuple[str, int]:
    """Convert and store one pair; return (key, kind) as a plan should treat the label.

    A known label keeps its kind even when this value does not fit it (the value is
    kept under ``invalid_fields``): a plan converts strictly and hands such lines back
    to this path.  A label SGLang never prints, or one printed twice in a line, is a
    garbled line (an interleaved write cut it): it goes to ``unknown_fields`` as printed.
    """
    spec = _KNOWN.get(label)
    if spec is None:
        if label.endswith(" graph") and value in ("True", "False"):
            spec = ("cuda_graph", _GRAPH)
        else:
            return _unknown(rec, label, value)
    key, kind = spec
    if key in seen:
        return _unknown(rec, label, value)
    seen.add(key)
    if kind == _GRAPH:
        if value in ("True", "False"):
            rec["cuda_graph"] = value == "True"
            rec["graph_backend"] = _slug(label[:-6])
            return spec
        key = _slug(label)
    elif kind in (_INT, _FLOAT, _PERCENT):
        text = value[:-1] if kind == _PERCENT and value.endswith("%") else value
        try:
            rec[key] = (_count if kind == _INT else _real)(text)
        except ValueError:
            # SGLang writes counts and rates as finite non-negative numbers; anything
            # else (nan, inf, -5, a garbled token) is kept apart, never used as one.
            rec.setdefault("invalid_fields", {})[key] = value
        return spec
    rec[key] = value  # _STR
    return spec


def _parse_body(body: str, rec: dict) -> list:
    """Add the body's fields to ``rec``; return [(label regex, key, kind, label), ...]."""
    items = []
    seen: set = set()
    for seg in body.split(", "):
        if not seg or seg.isspace():
            continue
        pd = seg.startswith("PD: ")
        if pd:
            seg = seg[4:]
        found = False
        for m in _PAIR.finditer(seg):
            found = True
            label, value = m.groups()
            key, kind = _store(rec, label, value, seen)
            pattern = re.escape(label)
            if pd:
                pattern = "(?:PD: )?" + pattern
                pd = False
            items.append((pattern, key, kind, label))
        if not found:  # a label cut before its value ("#queue-req" at a torn end)
            _unknown(rec, seg.strip(), "")
    return items


_VALUE_PATTERN = {
    _INT: r"([^\s,]+)",
    _FLOAT: r"([^\s,]+)",
    _PERCENT: r"([^\s,%]+)%",
    _GRAPH: r"(True|False)",
    _STR: r"([^\s,]+)",
}


# Hybrid KV pools (models with sliding-window or Mamba layers, HiSparse) log one usage per
# pool instead of "#token"/"token usage".  "token"/"token_usage" are then taken from the
# pool that bounds the batch: the full-attention pool, else HiSparse's device pool (what
# HiSparse logged as "#token" before #22331).
_POOL_TOTALS = (
    ("token", ("full_token", "gpu_token")),
    ("token_usage", ("full_token_usage", "gpu_token_usage")),
)


def _pool_aliases(keys) -> dict[str, str]:
    """{source key: "token" or "token_usage"} for a line whose fields are ``keys``."""
    aliases = {}
    for total, sources in _POOL_TOTALS:
        if total not in keys:
            for source in sources:
                if source in keys:
                    aliases[source] = total
                    break
    return aliases


def _fill_pool_totals(rec: dict) -> None:
    for source, total in _pool_aliases(rec).items():
        rec[total] = rec[source]


_SEPARATOR = ",? "  # ", " since v0.5.2; a bare " " in the old prefill tail


class _Plan:
    """A compiled layout of one batch line: a regex, and a generated function that
    turns its groups into the record in one dict display."""

    __slots__ = ("regex", "build")

    def __init__(self, kind: str, word: str, items: list, head: str) -> None:
        parts = [f"{label}: {_VALUE_PATTERN[vkind]}" for label, _key, vkind, _l in items]
        self.regex = re.compile(
            head
            + re.escape(word)
            + r"(?: \[(\d+)\])?[.,:]? *"
            + _SEPARATOR.join(parts)
            + r"[\s,]*\Z"
        )
        names = [f"v{i}" for i in range(len(items))]
        aliases = _pool_aliases([key for _p, key, _k, _l in items])
        fields = []
        for name, (_p, key, vkind, label) in zip(names, items):
            if vkind in (_INT, _FLOAT, _PERCENT):
                value = f"{'_count' if vkind == _INT else '_real'}({name})"
                fields.append(f"{key!r}: {value}")
                if key in aliases:
                    fields.append(f"{aliases[key]!r}: {value}")
            elif vkind == _GRAPH:
                fields.append(f"'cuda_graph': {name} == 'True'")
                fields.append(f"'graph_backend': {_slug(label[:-6])!r}")
            else:  # _STR
                fields.append(f"{key!r}: {name}")
        source = "\n".join(
            [
                "def build(m):",
                f"    a, s, f, p, it, {', '.join(names)}, = m.groups()",
                "    r = _rank_values(p) if p else _NO_RANK_VALUES",
                "    try:",
                "        rec = {",
                f"            'kind': {kind!r},",
                "            'time': s + f if f else s,",
                "            'epoch': _epoch(s, f) if s else None,",
                "            'arrival': float(a) if a is not None else None,",
                "            'dp': r[0], 'tp': r[1], 'ep': r[2], 'pp': r[3],",
                "            'attn_cp': r[4], 'moe_dp': r[5],",
                "            'iter': int(it) if it is not None else None,",
                *(f"            {field}," for field in fields),
                "        }",
                "    except ValueError:",
                "        return None",
                "    if r[6]:",
                "        rec.update(r[6])",
                "    return rec",
            ]
        )
        namespace = {
            "_count": _count,
            "_real": _real,
            "_rank_values": _rank_values,
            "_NO_RANK_VALUES": _NO_RANK_VALUES,
            "_epoch": _epoch,
        }
        exec(compile(source, f"<pdbench.loglines plan: {word}>", "exec"), namespace)
        self.build = namespace["build"]


_MAX_PLANS = 32
_plans: list[_Plan] = []


def _learn_plan(kind: str, word: str, items: list, line: str) -> None:
    if len(_plans) >= _MAX_PLANS:
        return
    head = _NO_HEAD_PATTERN if line.startswith(word) else _HEAD_PATTERN
    try:
        plan = _Plan(kind, word, items, head)
    except re.error:
        return
    # Keep it only if it reads this very line (it will not for a record glued to other
    # output, or a body with text that is not a pair) and is not known already (a line
    # whose value did not convert comes back here with a known layout).
    if plan.regex.match(line) is None:
        return
    if any(known.regex.pattern == plan.regex.pattern for known in _plans):
        return
    _plans.append(plan)


def _by_plan(line: str) -> dict | None:
    """The record of a batch line in a layout seen before, else None."""
    for i, plan in enumerate(_plans):
        m = plan.regex.match(line)
        if m is not None:
            if i:  # most recently used first
                try:
                    _plans.remove(plan)
                    _plans.insert(0, plan)
                except ValueError:
                    pass
            return plan.build(m)
    return None


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
# sglang/srt/eplb/eplb_manager.py (v0.4.10 to v0.5.23): EPLBManager.rebalance logs both.
_REBALANCE_START = "[EPLBManager] rebalance start"
_REBALANCE_END = re.compile(r"\[EPLBManager\] rebalance end(?: time=(\S+?)s)?$")
# sglang/srt/managers/scheduler.py flush_cache (v0.4.6.post3 to v0.5.23): one of these per
# scheduler that was asked (/flush_cache); the refusal names what is still there.
_FLUSHED = "Cache flushed successfully!"
# sglang/srt/entrypoints/http_server.py /generate: a request the tokenizer manager refuses
# (a ValueError: past the context length, …); "Error: " before v0.4.7 (wheel 0.4.6.post3).
# Streamed, the client got 200 and one error event (pdbench.dialects, stream_error_detail).
_REFUSED = ("[http_server] Error: ", "Error: ")
_NOT_FLUSHED = re.compile(r"Cache not flushed because there are pending requests\. "
                          r"#queue-req: (\d+), #running-req: (\d+)$")


def _parse_message(msg: str, rec: dict, line: str | None) -> dict | None:
    c = msg[:1]
    if c == "D":
        if msg.startswith("Decode batch"):
            return _parse_batch(msg, "decode", "Decode batch", rec, line)
    elif c == "P":
        if msg.startswith("Prefill batch"):
            return _parse_batch(msg, "prefill", "Prefill batch", rec, line)
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
    elif c == "C":
        if msg.rstrip() == _FLUSHED:
            rec["kind"] = "cache_flushed"
            return rec
        m = _NOT_FLUSHED.match(msg.rstrip())
        if m is not None:
            rec["kind"] = "cache_not_flushed"
            rec["queue_req"], rec["running_req"] = int(m.group(1)), int(m.group(2))
            return rec
    elif c == "T":
        if msg.rstrip() == _READY:
            rec["kind"] = "ready"
            return rec
    elif c == "[":
        if msg.rstrip() == _REBALANCE_START:
            rec["kind"] = "eplb_rebalance_start"
            return rec
        m = _REBALANCE_END.match(msg.rstrip())
        if m is not None:
            try:
                rec["seconds"] = float(m.group(1)) if m.group(1) is not None else None
            except ValueError:
                return None
            rec["kind"] = "eplb_rebalance_end"
            return rec
    if c in "[E":
        for head in _REFUSED:
            if msg.startswith(head):
                rec["kind"] = "request_refused"
                rec["message"] = msg[len(head):].rstrip()
                return rec
    return None


def _parse_batch(msg: str, kind: str, word: str, rec: dict, line: str | None) -> dict | None:
    rest = msg[len(word) :]
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
    rec["kind"] = kind
    rec["iter"] = iteration
    body = rest.lstrip(".,: ").rstrip("\r\n")
    if "[" in body:
        # Another process's record written into this one ("#runn[2026-… DP1] Decode
        # batch, …"): what follows its prefix belongs to the other line.
        glued = _HEAD_ANYWHERE.search(body)
        if glued is not None:
            body = body[: glued.start()]
    items = _parse_body(body, rec)
    if not items:
        return None
    _fill_pool_totals(rec)
    if line is not None and "unknown_fields" not in rec:
        _learn_plan(kind, word, items, line)
    return rec


# ---------------------------------------------------------------------------------------
# Public API


def parse_line(line: str) -> dict | None:
    """Parse one SGLang log line; ``None`` when it is not one of ``KINDS``.

    The line may keep its trailing newline.  See the module docstring for the keys.
    """
    # Cheap literal pre-check: every kind's message contains one of these.
    if "batch" in line:
        rec = _by_plan(line)  # the common path: a layout seen before, standard prefix
        if rec is not None:
            return rec
    elif ("rofiling" not in line and "fired up" not in line and "EPLBManager" not in line
          and "Cache " not in line and "Error: " not in line):
        if "\x1b" not in line:
            return None
        line = _ANSI.sub("", line)
        if ("batch" not in line and "rofiling" not in line and "fired up" not in line
                and "EPLBManager" not in line and "Cache " not in line
                and "Error: " not in line):
            return None
    return _parse_prefixed(line)


def _parse_prefixed(line: str) -> dict | None:
    """The general path: remove the wrappers, read the prefix, parse the message."""
    try:
        return _parse_layers(line)
    except ValueError:  # a date that does not exist (month 13): not SGLang's prefix
        return None


def _parse_layers(line: str) -> dict | None:
    text = _ANSI.sub("", line) if "\x1b" in line else line
    arrival = None
    while True:
        m = _WRAPPER.match(text)
        if m is None or not m.end():
            break
        if arrival is None:  # the outermost timestamp is the line's arrival
            arrival = _wrapper_time(m)
        text = text[m.end() :]
    if text is not line and "batch" in text:
        rec = _by_plan(text)
        if rec is not None:
            if arrival is not None:
                rec["arrival"] = arrival
            return rec
    for name, regex in _PREFIX_REGEXES:
        m = regex.match(text)
        if m is not None:
            break
    fields = m.groupdict()
    msg = text[m.end() :]
    level = _LEVEL_COLUMN.match(msg)
    if level is not None:
        msg = msg[level.end() :]
    if msg.endswith("\n"):
        msg = msg.rstrip("\r\n")
    rec = _record(fields.get("s"), fields.get("f"), fields.get("p"), arrival)
    if "t" in fields:  # a time of day without date: no epoch
        rec["time"] = fields["t"] + (fields["f"] or "")
    # Only the standard prefix, or none, starts a compiled layout (_Plan).
    learn_from = text if name in ("sglang", "none") and level is None else None
    result = _parse_message(msg, rec, learn_from)
    if result is not None:
        return result
    # The record may follow other output on the same line (a progress bar).
    m = _HEAD_ANYWHERE.search(text)
    if m is None:
        return None
    msg = text[m.end() :]
    if msg.endswith("\n"):
        msg = msg.rstrip("\r\n")
    return _parse_message(msg, _record(*m.groups(), arrival), None)


def _record(second: str | None, frac: str | None, prefix: str | None,
            arrival: float | None) -> dict:
    rec = {
        "kind": None,
        "time": (second + frac if frac else second) if second else None,
        "epoch": _epoch(second, frac) if second else None,
        "arrival": arrival,
    }
    rec.update(_ranks(prefix) if prefix else _NO_RANKS)
    return rec


def _wrapper_time(m: re.Match) -> float | None:
    """The arrival time a wrapper gives, as POSIX seconds (a zone-less time as if UTC)."""
    if m.group("a") is not None:
        return float(m.group("a"))
    stamp = m.group("iso") or m.group("bt")
    if stamp is None:
        return None
    try:
        moment = _dt.datetime.fromisoformat(stamp.replace(",", ".").replace("Z", "+00:00"))
    except ValueError:  # not a real date: no arrival time
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=_UTC)
    return moment.timestamp()


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
    ``InputError`` naming the file when it is missing, a directory, unreadable or not
    text (checked at the call), or when a gzip stream turns out corrupt or truncated
    (raised while iterating, after the records before the damage).
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
        with (gzip.open if compressed else open)(name, "rb") as raw:
            _check_text(name, raw.read(_SNIFF_BYTES))
    except (OSError, EOFError, zlib.error) as exc:
        what = "gzip-compressed log" if _is_gzip(name) else "log"
        raise InputError(f"{name}: cannot read this {what}: {exc}") from exc
    return _records(name, compressed)


def _records(name: str, compressed: bool) -> Iterator[dict]:
    parse = parse_line
    n = 0
    try:
        if compressed:
            f = gzip.open(name, "rt", encoding="utf-8", errors="replace", newline="\n")
        else:
            f = open(name, encoding="utf-8", errors="replace", newline="\n")
        with f:
            for n, line in enumerate(f, 1):
                rec = parse(line)
                if rec is not None:
                    rec["file"] = name
                    rec["line"] = n
                    yield rec
    except (OSError, EOFError, zlib.error) as exc:
        what = "truncated or corrupt gzip" if compressed else "read error"
        raise InputError(f"{name}: {what} after line {n}: {exc}") from exc


def field_problems(records: Iterable[dict | None]) -> dict[str, dict[str, int]]:
    """How many records kept each label apart: ``{"unknown_fields": {label: records},
    "invalid_fields": {key: records}}`` (``None`` items are skipped)."""
    counts: dict[str, Counter] = {"unknown_fields": Counter(), "invalid_fields": Counter()}
    for record in records:
        if record:
            for what, counter in counts.items():
                if what in record:
                    counter.update(record[what].keys())
    return {what: dict(counter) for what, counter in counts.items()}


def rank_key(record: dict) -> int:
    """The DP rank a log record or trace belongs to (TP rank when there is no DP)."""
    for key in ("dp", "tp"):
        if record.get(key) is not None:
            return int(record[key])
    return 0


class LogFollower:
    """Reads the records appended to a set of log files since the last call."""

    def __init__(self, paths: list[Path], *, from_end: bool = False,
                 offsets: dict[str, int] | None = None) -> None:
        """Start at each file's end (``from_end``), at the given ``offsets`` (as
        :meth:`positions` returns them; files not named start at 0), or at 0."""
        self.paths = list(paths)
        if offsets is not None:
            self.offsets = {p: int(offsets.get(str(p), 0)) for p in paths}
        else:
            self.offsets = {p: (p.stat().st_size if from_end and p.exists() else 0)
                            for p in paths}
        self.partial = {p: b"" for p in paths}

    def positions(self) -> dict[str, int]:
        return {str(p): off for p, off in self.offsets.items()}

    def read(self) -> list[dict]:
        records = []
        for path in self.paths:
            try:
                with open(path, "rb") as fh:
                    fh.seek(self.offsets[path])
                    data = fh.read()
            except FileNotFoundError:
                continue
            self.offsets[path] += len(data)
            data = self.partial[path] + data
            lines = data.split(b"\n")
            self.partial[path] = lines.pop()
            for raw in lines:
                record = parse_line(raw.decode(errors="replace"))
                if record is not None:
                    record["file"] = str(path)
                    records.append(record)
        return records
