"""Fill detection on real SGLang fill logs and on built ones."""

import json
import subprocess
import sys


from pdbench.filltrack import FillTracker, fill_status
from pdbench.loglines import iter_log


def records_until(path, last_line):
    return [r for r in iter_log(path) if r["line"] <= last_line]


def tracker_for(records, **kw):
    tracker = FillTracker(**kw)
    tracker.feed_all(records)
    return tracker.status()


def test_real_fill_reaches_64(shared_fixtures):
    log = shared_fixtures / "h200-sglang-0.5.17-fill-release/filled-to-64/server_ts.log.gz"
    # driver.log: the last sleep line before release is line 318.
    status = tracker_for(records_until(log, 318), target=64, ranks=1)
    assert status["reached"] and not status["plateaued"]
    assert status["sleeping"]
    assert status["ranks"]["0"]["running_req"] == 64
    assert status["ranks"]["0"]["queue_req"] == 192


def test_real_fill_stuck_at_63_plateaus(shared_fixtures):
    log = shared_fixtures / "h200-sglang-0.5.17-fill-release/stuck-at-63/server_ts.log.gz"
    # driver.log: the poll gave up and released after line 504.
    records = records_until(log, 504)
    status = tracker_for(records, target=64, ranks=1, plateau_forwards=10)
    assert not status["reached"]
    assert status["plateaued"]
    assert status["sleeping"]
    rank = status["ranks"]["0"]
    assert rank["running_req"] == 63 and rank["queue_req"] == 193
    assert rank["forwards_without_growth"] >= 90
    # With a target fraction that accepts 63 of 64 the fill counts as reached.
    assert tracker_for(records, target=64, target_fraction=0.98)["reached"]
    # Early in the fill (before the batch stalled) it is neither.
    early = tracker_for(records_until(log, 200), target=64, plateau_forwards=10)
    assert not early["reached"] and not early["plateaued"]


def test_release_ends_sleeping(shared_fixtures):
    log = shared_fixtures / "h200-sglang-0.5.17-fill-release/filled-to-64/server_ts.log.gz"
    status = tracker_for(records_until(log, 340), target=64)
    assert not status["sleeping"]


def line(dp, running, queue, t=0):
    return (
        f"[2025-10-16 19:{t:02d}:00 DP{dp} TP{dp} EP{dp}] Decode batch. #running-req: {running}, "
        f"#token: 1, token usage: 0.69, pre-allocated usage: 0.63, #retracted-req: 0, "
        f"cuda graph: True, gen throughput (token/s): 0.38, #queue-req: {queue}, "
    )


def sleep(dp, t=0):
    return f"[2025-10-16 19:{t:02d}:00 DP{dp} TP{dp} EP{dp}] Scheduler.run_batch sleep 180.0s"


def test_every_rank_must_reach(tmp_path):
    # The runbook's DP0 fill: 68 -> 303 -> 540 -> 768 under 180 s sleeps.
    lines = []
    for t, n in enumerate([68, 303, 540, 768]):
        lines += [sleep(0, t), line(0, n, 5, t), sleep(1, t), line(1, min(n, 700), 5, t)]
    log = tmp_path / "decode.log"
    log.write_text("\n".join(lines) + "\n")
    status = fill_status([log], 768, ranks=2)
    assert status["ranks"]["0"]["reached"] and not status["ranks"]["1"]["reached"]
    assert not status["reached"] and not status["plateaued"]
    assert status["global_running_req"] == 768 + 700
    # A missing rank keeps the fill open.
    assert not fill_status([log], 700, ranks=3)["reached"]
    assert fill_status([log], 700, ranks=2)["reached"]


def test_cli_fill_status(tmp_path):
    log = tmp_path / "decode.log"
    log.write_text("\n".join([sleep(0), line(0, 768, 250)]) + "\n")
    out = subprocess.run(
        [sys.executable, "-m", "pdbench.cli", "fill-status", "--logs", str(log), "--target", "768"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    status = json.loads(out)
    assert status["reached"] and status["sleeping"]
    assert status["ranks"]["0"]["running_req"] == 768
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "pdbench.cli",
            "fill-status",
            "--logs",
            str(tmp_path / "nope.log"),
            "--target",
            "768",
        ],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "nope.log" in bad.stderr and bad.stdout == ""
