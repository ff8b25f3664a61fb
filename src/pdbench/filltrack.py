"""Fill tracking: is every decode DP rank's batch full, stuck, still growing, or running
freely again? The meanings of decode log records that the fill and release stages act on.

While ``/slow_down`` holds decode, each forward logs one ``Decode batch`` line per rank
(``--decode-log-interval 1``) and one ``Scheduler.run_batch sleep`` line. The fill ends
when one of these holds:

* **reached** - every expected rank's ``#running-req`` is at least
  ``ceil(target x target_fraction)`` (target = max_running_requests // dp);
* **plateaued** - every rank has either reached the threshold or stopped below it:
  *stuck*, not grown for ``plateau_forwards`` consecutive decode lines while requests are
  still queued (``#queue-req`` > 0; SGLang 0.5.17 stays at 63 of 64 this way when the
  filling prefill is chunked, seen in real SGLang 0.5.17 output recorded on an H200), or
  *starved*, not grown with nothing queued while no request has arrived at any rank for
  ``plateau_forwards`` decode lines (the requests a rank holds, running + queued + in KV
  transfer, stopped growing everywhere: the client has sent all it will, and where decode
  picks ranks by the random bootstrap room some rank may have received fewer than its
  target). Waiting for the exact target would hang in both cases;
* otherwise the caller's timeout says why not.

``sleeping`` tells whether a rank is still under slow_down: a sleep line among its two
latest records; ``running_freely`` that it is released: its two latest records are decode
lines (after release, decode lines follow each other with no sleep between).
"""

from __future__ import annotations

import datetime as dt
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field

from .loglines import iter_log, rank_key


@dataclass
class RankFill:
    running_req: int | None = None
    queue_req: int | None = None
    max_running_req: int = 0
    level_forwards: int = 0  # consecutive decode lines without growth
    held: int = 0  # running + queued + in KV transfer, at the latest decode line
    max_held: int = 0
    held_level_forwards: int = 0  # consecutive decode lines without a new arrival
    decode_lines: int = 0
    sleeps: int = 0
    recent: list[str] = field(default_factory=list)  # kinds of the latest two records
    last_time: str | None = None

    def feed(self, record: dict) -> None:
        kind = record["kind"]
        if kind == "decode" and record.get("running_req") is None:
            return  # its count was garbled (loglines keeps it under invalid_fields)
        if kind == "decode":
            running = int(record["running_req"])
            if self.running_req is not None and running <= self.max_running_req:
                self.level_forwards += 1
            else:
                self.level_forwards = 0
            self.running_req = running
            self.max_running_req = max(self.max_running_req, running)
            self.queue_req = record.get("queue_req")
            held = running + sum(int(record.get(k) or 0)
                                 for k in ("queue_req", "transfer_req", "prealloc_req"))
            if self.decode_lines and held <= self.max_held:
                self.held_level_forwards += 1
            else:
                self.held_level_forwards = 0
            self.held = held
            self.max_held = max(self.max_held, held)
            self.decode_lines += 1
            self.last_time = record.get("time")
        elif kind == "slow_down":
            self.sleeps += 1
        else:
            return
        self.recent = (self.recent + [kind])[-2:]

    @property
    def sleeping(self) -> bool:
        return "slow_down" in self.recent

    @property
    def running_freely(self) -> bool:
        return self.recent == ["decode", "decode"]


class FillTracker:
    """Consumes parsed log records (in order per rank) and reports the fill state."""

    def __init__(self, target: int, *, ranks: int | None = None, target_fraction: float = 1.0,
                 plateau_forwards: int = 10, requests: int | None = None) -> None:
        if target < 1:
            raise ValueError(f"target batch per rank must be >= 1, got {target}")
        self.target = target
        self.threshold = max(1, math.ceil(target * target_fraction))
        self.expected_ranks = ranks
        self.plateau_forwards = plateau_forwards
        # The requests the client sends, when known: a pause in arrivals is starvation only
        # once every one of them has reached decode (prefill may still hold the rest; one
        # slow prefill group supplies a large batch in bursts seconds apart).
        self.requests = requests
        self.ranks: dict[int, RankFill] = {}

    def feed(self, record: dict) -> None:
        if record["kind"] in ("decode", "slow_down"):
            self.ranks.setdefault(rank_key(record), RankFill()).feed(record)

    def feed_all(self, records: Iterable[dict]) -> None:
        for record in records:
            self.feed(record)

    def _rank_reached(self, r: RankFill) -> bool:
        return r.running_req is not None and r.running_req >= self.threshold

    def _rank_plateaued(self, r: RankFill) -> bool:
        return (
            r.running_req is not None
            and not self._rank_reached(r)
            and r.level_forwards >= self.plateau_forwards
            and (r.queue_req or 0) > 0
        )

    def _rank_starved(self, r: RankFill) -> bool:
        """Below the threshold, nothing on its way to the batch (queued, in KV transfer or
        pre-allocated: a PD decode rank holds a request from the moment the router sends
        it, long before its KV arrives), and no request arriving for ``plateau_forwards``
        lines (a rank that only sleeps holds none)."""
        if self._rank_reached(r) or r.held > (r.running_req or 0):
            return False
        if r.running_req is None:
            return r.sleeps >= self.plateau_forwards
        return r.held_level_forwards >= self.plateau_forwards

    def _arrivals_stopped(self) -> bool:
        """No rank has received a request for ``plateau_forwards`` decode lines, and
        (``requests`` known) every request the client sends has reached decode."""
        if self.requests is not None and sum(r.max_held for r in self.ranks.values()) \
                < self.requests:
            return False
        return all(r.held_level_forwards >= self.plateau_forwards
                   for r in self.ranks.values() if r.decode_lines)

    def status(self) -> dict:
        complete = self.expected_ranks is None or len(self.ranks) >= self.expected_ranks
        stopped = self._arrivals_stopped()
        per_rank = {
            str(dp): {
                "running_req": r.running_req,
                "queue_req": r.queue_req,
                "max_running_req": r.max_running_req,
                "forwards_without_growth": r.level_forwards,
                "decode_lines": r.decode_lines,
                "sleeps": r.sleeps,
                "sleeping": r.sleeping,
                "reached": self._rank_reached(r),
                "plateaued": self._rank_plateaued(r),
                "starved": stopped and self._rank_starved(r),
                "held_req": r.held,
                "forwards_without_arrival": r.held_level_forwards,
                "last_time": r.last_time,
            }
            for dp, r in sorted(self.ranks.items())
        }
        reached = complete and bool(self.ranks) and all(
            v["reached"] for v in per_rank.values()
        )
        plateaued = (
            complete
            and not reached
            and bool(self.ranks)
            and all(v["reached"] or v["plateaued"] or v["starved"] for v in per_rank.values())
        )
        short = [
            {"rank": int(dp), "running_req": v["running_req"] or 0,
             "queue_req": v["queue_req"] or 0,
             "stopped": "starved" if v["starved"] else "stuck" if v["plateaued"] else None}
            for dp, v in per_rank.items() if not v["reached"]
        ]
        # A rank that only sleeps (no decode line yet) or is not seen yet holds 0 requests.
        missing = max(0, (self.expected_ranks or 0) - len(per_rank))
        running = [v["running_req"] or 0 for v in per_rank.values()] + [0] * missing
        return {
            "target": self.target,
            "threshold": self.threshold,
            "plateau_forwards": self.plateau_forwards,
            "ranks_expected": self.expected_ranks,
            "ranks_seen": len(self.ranks),
            "global_running_req": sum(running),
            "min_running_req": min(running) if running else None,
            "max_running_req": max(running) if running else None,
            "reached": reached,
            "plateaued": plateaued,
            "short_ranks": short,
            "sleeping": any(v["sleeping"] for v in per_rank.values()),
            "ranks": per_rank,
        }


def fill_status(paths: Iterable[str | os.PathLike], target: int, *, ranks: int | None = None,
                target_fraction: float = 1.0, plateau_forwards: int = 10) -> dict:
    """Fill state from complete log files (``pdbench fill-status``)."""
    tracker = FillTracker(target, ranks=ranks, target_fraction=target_fraction,
                          plateau_forwards=plateau_forwards)
    for path in paths:
        tracker.feed_all(iter_log(path))
    return tracker.status()


def iso_epoch(at: str | None) -> float | None:
    """Epoch seconds of a stage record's ISO 8601 time (None when absent)."""
    return dt.datetime.fromisoformat(at).timestamp() if at else None


def release_requested(filled: dict) -> float | None:
    """When the fill asked for the release (epoch seconds), if its record says."""
    return iso_epoch(filled.get("release_requested_at"))
