"""A starting server that is alive but neither answers nor writes is failed after
timeouts.server_stall_s, not after the hour of timeouts.server_ready_s."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import yaml

from pdbench import config
from pdbench.context import PointContext
from pdbench.layout import PointPaths
from pdbench.servers import _wait_ready
from pdbench.steps import ServerError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def ctx(tmp_path):
    raw = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cfg = config.validate({**raw, "timeouts": {"server_stall_s": 1.5}})
    paths = PointPaths(tmp_path / "results" / "ep48" / "p1")
    return PointContext(cfg, config.find_point(cfg, "ep48", "p1"), paths)


def test_a_hung_server_fails_after_the_stall_time(ctx, live_pid, tmp_path):
    log = tmp_path / "node0.log"
    log.write_text("Load weight begin\nInit torch distributed ends\n")
    start = time.monotonic()
    with pytest.raises(ServerError) as err:
        _wait_ready("decode at http://x", ready=lambda: False, pid=live_pid, log=log,
                    timeout_s=3600, on_dead=lambda: "dead", ctx=ctx,
                    stall_s=ctx.cfg["timeouts"]["server_stall_s"])
    took = time.monotonic() - start
    print(f"hung server failed after {took:.1f} s (stall 1.5 s, ready timeout 3600 s)")
    assert 1.5 <= took < 6
    message = str(err.value)
    assert "hung" in message and "timeouts.server_stall_s" in message
    assert "Init torch distributed ends" in message  # its last log lines


def test_a_server_whose_log_grows_is_not_hung(ctx, live_pid, tmp_path):
    log = tmp_path / "node0.log"
    log.write_text("")
    stop = threading.Event()

    def write():
        while not stop.is_set():
            with open(log, "a") as fh:
                fh.write("capturing cuda graph\n")
            time.sleep(0.3)

    writer = threading.Thread(target=write)
    writer.start()
    deadline = time.monotonic() + 4
    try:
        waited = _wait_ready("decode at http://x", ready=lambda: time.monotonic() > deadline,
                             pid=live_pid, log=log, timeout_s=60, on_dead=lambda: "dead",
                             ctx=ctx, stall_s=1.5)
    finally:
        stop.set()
        writer.join()
    assert waited >= 3.5  # alive and writing past the stall time: waited until ready


def test_the_timeouts_are_config_keys():
    raw = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cfg = config.validate(raw)
    assert cfg["timeouts"] == {"server_ready_s": 3600, "router_ready_s": 600,
                               "server_stall_s": 900, "drain_s": 600}
