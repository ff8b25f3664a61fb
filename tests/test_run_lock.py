"""One live run per results tree: the run lock, and what a refused run leaves alone."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pdbench import runstate

REPO = Path(__file__).resolve().parents[1]


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def write_lock(results: Path, host: str, pid) -> Path:
    path = runstate.lock_path(results)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"host": host, "pid": pid, "since": "earlier"}))
    return path


def test_a_run_takes_the_lock_and_gives_it_back(tmp_path):
    held = runstate.acquire(tmp_path, pid=4242)
    assert held["pid"] == 4242 and runstate.lock_path(tmp_path).exists()
    assert runstate.acquire(tmp_path, pid=4242)["pid"] == 4242  # the owner again: fine
    runstate.release(tmp_path, pid=9999)  # not the owner: nothing happens
    assert runstate.lock_path(tmp_path).exists()
    runstate.release(tmp_path, pid=4242)
    assert not runstate.lock_path(tmp_path).exists()


@pytest.mark.parametrize("who", ["live pid here", "another host"])
def test_a_second_live_run_is_refused(tmp_path, live_pid, who):
    host = socket.gethostname() if who == "live pid here" else "login-other"
    path = write_lock(tmp_path, host, live_pid)
    before = path.read_text()
    with pytest.raises(runstate.RunLocked, match=f"pid {live_pid} on {host}") as err:
        runstate.acquire(tmp_path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    assert path.read_text() == before


@pytest.mark.parametrize("content", ["{not json", "", '{"host": 3}', '["x"]'])
def test_a_lock_of_a_gone_or_garbled_run_is_taken_over(tmp_path, content):
    write_lock(tmp_path, socket.gethostname(), dead_pid())
    assert runstate.acquire(tmp_path)["pid"] > 0
    runstate.lock_path(tmp_path).write_text(content)
    assert runstate.acquire(tmp_path, pid=77)["pid"] == 77


def test_a_refused_run_changes_nothing_and_stops_nothing(tmp_path, live_pid):
    """A real run on a tree another live run owns fails in onstart, before any job,
    without touching the tree (no config rewritten, no stop-all)."""
    for name in ("Snakefile", "workflow", "config", "slurm", "profiles"):
        (tmp_path / name).symlink_to(REPO / name)
    results = tmp_path / "results"
    lock = write_lock(results, socket.gethostname(), live_pid)
    config = results / ".pdbench" / "config.json"
    config.write_text("{}\n")  # what the live run's stages read
    exe = shutil.which("snakemake") or str(Path(sys.executable).parent / "snakemake")
    proc = subprocess.run([exe, "--cores", "1", "results/ep48/p1/allocation.json"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "in use by another Snakemake run" in out and f"pid {live_pid}" in out, out[-3000:]
    assert "stop-all" not in out
    assert config.read_text() == "{}\n"
    assert json.loads(lock.read_text())["pid"] == live_pid
    assert sorted(p.name for p in results.rglob("*")) == [".pdbench", "config.json",
                                                          "run.lock"]


def test_a_stage_of_a_killed_snakemake_stops(tmp_path):
    """SIGKILL leaves the lock of a dead process: every waiting stage of that run sees
    it at its next check and stops, instead of finishing a fill alone."""
    write_lock(tmp_path, socket.gethostname(), dead_pid())
    with pytest.raises(runstate.RunFailed, match="is gone"):
        runstate.check(tmp_path)


def test_a_stage_of_a_live_run_goes_on(tmp_path, live_pid):
    write_lock(tmp_path, socket.gethostname(), live_pid)
    runstate.check(tmp_path)  # no failure, owner alive
    write_lock(tmp_path, "login-other", 1)  # another host's run: not checkable, not stopped
    runstate.check(tmp_path)


def test_a_stop_request_stops_even_a_keep_going_run(tmp_path):
    runstate.start_run(tmp_path, keep_going=True)
    runstate.mark_failed(tmp_path, "one point failed")
    runstate.check(tmp_path)  # --keep-going: a failure stops only its point
    runstate.mark_failed(tmp_path, "Snakemake received SIGTERM", stop_all=True)
    with pytest.raises(runstate.RunFailed, match="SIGTERM"):
        runstate.check(tmp_path)
