"""Shared helpers of the integration tests: the rehearsal config, free ports, processes
started in their own process groups (always stopped), bounded waits, and /proc scans."""

from __future__ import annotations

import copy
import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from pdbench import config as pdconfig

REPO = Path(__file__).resolve().parents[2]
SGLANG_VENV = REPO / ".venv-sglang"
SGLANG_PYTHON = SGLANG_VENV / "bin" / "python"
TINY_MODEL = REPO / ".cache" / "tiny-model"

# Port ranges the tests never pick a block from: the local cluster's daemons (default
# base 16800, the lifecycle test's second cluster from 26800), the rehearsal's default
# shared_host_base block (31000-32101).
_RESERVED = ((16800, 17300), (26800, 27300), (31000, 32110))


def skip_or_fail(reason: str) -> None:
    """Skip with ``reason``; under CI (``CI`` set) a missing prerequisite is a failure."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this is a failure, not a skip)", pytrace=False)
    pytest.skip(reason)


# ------------------------------------------------------------------------------- config


def deep_merge(base: Mapping, override: Mapping) -> dict:
    """Snakemake's merge of config files: mappings merge key by key, anything else replaces."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def rehearsal_config(*overrides: Mapping[str, Any]) -> dict:
    """config/config.yaml, then config/rehearsal.yaml, then ``overrides``; validated."""
    raw = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    for layer in (yaml.safe_load((REPO / "config" / "rehearsal.yaml").read_text()), *overrides):
        raw = deep_merge(raw, layer)
    return pdconfig.validate(raw, source="test config")


def small_point_overrides(shared_host_base: int, prometheus_port: int) -> dict:
    """One point: EP8 decode on 2 nodes, 1 prefill group of 1 node (3 nodes), cap 32."""
    return {
        "grid": {"ep_sizes": [8], "prefill_groups": [1], "eplb": ["none"]},
        "topology": {"nodes_per_prefill_group": 1},
        "site": {"gpus_per_node": 4},
        "server_args": {"decode": {"max-running-requests": 32}},
        "ports": {"shared_host_base": shared_host_base},
        "router": {"extra_args": ["--prometheus-port", str(prometheus_port)]},
    }


# -------------------------------------------------------------------------------- ports


def port_free(port: int) -> bool:
    """Nothing listens on ``port`` (0.0.0.0, as the servers bind) and it can be bound."""
    with socket.socket() as s:
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shared_host_ports(base: int, prefill_nodes: Sequence[int], decode_nodes: int) -> list[int]:
    """Every port ``pdbench.topology.plan`` hands out from ``shared_host_base`` = ``base``:
    per prefill group g (slot g-1): its node ranks, dist-init +90, bootstrap +91; decode
    (slot 9) likewise; the router at +1000."""
    ports = []
    for slot, nnodes in enumerate(prefill_nodes):
        block = base + 100 * slot
        ports += [block + r for r in range(nnodes)] + [block + 90, block + 91]
    block = base + 900
    ports += [block + r for r in range(decode_nodes)] + [block + 90, block + 91]
    return ports + [base + 1000]


def free_shared_host_base(
    prefill_nodes: Sequence[int], decode_nodes: int, extra: int = 0, tries: int = 200
) -> tuple[int, list[int]]:
    """A ``ports.shared_host_base`` whose planned ports are all free, plus ``extra`` more
    free ports from the same block (offsets 92-99 of the decode slot, unused by the plan).

    Picked at random below the ephemeral range (so outgoing connections do not take
    them), away from the ports other tests and the rehearsal use.
    """
    rng = random.Random()
    for _ in range(tries):
        base = rng.randrange(18000, 31000 - 1001, 10)
        if any(base <= hi and base + 1000 >= lo for lo, hi in _RESERVED):
            continue
        extras = [base + 992 + i for i in range(extra)]
        wanted = shared_host_ports(base, prefill_nodes, decode_nodes) + extras
        if all(port_free(p) for p in wanted):
            return base, extras
    raise RuntimeError("no free block of ports for ports.shared_host_base")


# ---------------------------------------------------------------------------- processes


class Processes:
    """Processes started in their own process groups; ``stop_all`` ends every group."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(
        self,
        name: str,
        argv: Sequence[str],
        log: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike | None = None,
    ) -> subprocess.Popen:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [str(a) for a in argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
            )
        self.procs.append((name, proc))
        return proc

    def check_alive(self, logs: Mapping[str, Path] | None = None) -> None:
        """Fail naming the first process that has exited (with its log tail)."""
        for name, proc in self.procs:
            if proc.poll() is not None:
                log = (logs or {}).get(name)
                raise AssertionError(
                    f"{name} exited with {proc.returncode}"
                    + (f"; last lines of {log}:\n{tail(log)}" if log else "")
                )

    def stop_all(self, grace_s: float = 5.0) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            live = [p for _, p in self.procs if p.poll() is None]
            for proc in live:
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + grace_s
            for proc in live:
                try:
                    proc.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
        # Whatever a leader left behind in its group (it ended, its children may not have).
        for _, proc in self.procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def wait_for(
    predicate: Callable[[], Any],
    timeout: float,
    what: str,
    *,
    interval: float = 0.1,
    check: Callable[[], None] | None = None,
    detail: Callable[[], str] | None = None,
) -> Any:
    """Poll ``predicate`` until truthy; ``check`` may raise early (a process died)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if check is not None:
            check()
        if time.monotonic() >= deadline:
            extra = f"\n{detail()}" if detail else ""
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{extra}")
        time.sleep(interval)


def http_status(url: str, timeout: float = 2.0) -> int | None:
    try:
        return requests.get(url, timeout=timeout).status_code
    except requests.RequestException:
        return None


def tail(path: Path | None, lines: int = 20) -> str:
    if path is None:
        return ""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join("    " + line[:300] for line in text.splitlines()[-lines:])


def processes_matching(needles: Iterable[str]) -> list[tuple[int, str]]:
    """(pid, command line) of every live process whose command line contains every needle."""
    needles = list(needles)
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as fh:
                cmdline = fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
            with open(f"/proc/{entry.name}/stat") as fh:
                state = fh.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state == "Z" or not cmdline:
            continue
        if all(n in cmdline for n in needles):
            found.append((int(entry.name), cmdline))
    return found


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def local_slurm_skip_reason(*required: Path) -> str | None:
    """Why tests on the local Slurm cluster cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root (the local Slurm cluster runs as root)"
    for path in required:
        if not Path(path).exists():
            return f"{path} missing (run scripts/setup)"
    script = REPO / "scripts" / "local-slurm"
    try:
        status = subprocess.run(
            [str(script), "status"],
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"scripts/local-slurm status failed: {exc}"
    if status.returncode != 0:
        return f"local Slurm cluster not up (scripts/local-slurm up): {status.stdout.strip()}"
    return None
