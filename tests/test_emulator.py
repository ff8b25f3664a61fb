"""The SGLang emulator (a test double): its API, its PD behaviour and the fidelity of what it
writes, read back with the project's own log grammar, trace reader and throughput method.

Node processes are started directly on localhost with distinct ports (no Slurm); every
process is stopped by the ``launch`` fixture's finalizer, also when a test fails.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from packaging.version import Version

from pdbench.balance import read_dump
from pdbench.dialects import dialect_for_version
from pdbench.emulator.args import Knobs, StartupError, parse_args
from pdbench.emulator.dialect import dialect_for
from pdbench.emulator.experts import moe_imbalance
from pdbench.emulator.tracefmt import TraceRank, write_trace
from pdbench.loglines import iter_log, parse_line
from pdbench.measure import measure
from pdbench.trace import step_time, trace_rank_from_name

BASE_MS = 20.0
PER_REQ_MS = 0.5
FAST_ENV = {
    "PDBENCH_EMULATOR_WARMUP_S": "0.3",
    "PDBENCH_EMULATOR_STEP_BASE_MS": str(BASE_MS),
    "PDBENCH_EMULATOR_STEP_PER_REQ_MS": str(PER_REQ_MS),
    "PDBENCH_EMULATOR_DIST_TIMEOUT_S": "20",
}


def step_ms(batch: int, factor: float = 1.0) -> float:
    return (BASE_MS + PER_REQ_MS * batch) * factor


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Server:
    """One emulated SGLang server: ``nnodes`` node processes."""

    def __init__(
        self, tmp: Path, name: str, args: list[str], nnodes: int = 1, env: dict | None = None
    ) -> None:
        self.name = name
        self.nnodes = nnodes
        self.ports = free_ports(nnodes + 2)
        self.http_ports = self.ports[:nnodes]
        self.dist_port, self.bootstrap_port = self.ports[nnodes], self.ports[nnodes + 1]
        self.logs = [tmp / f"{name}_node_rank_{i}.log" for i in range(nnodes)]
        self.env = {**os.environ, **FAST_ENV, **(env or {})}
        self.args = args
        self.procs: list[subprocess.Popen] = []
        self.statuses: list[int] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_ports[0]}"

    def command(self, rank: int) -> list[str]:
        cmd = [
            sys.executable,
            "-m",
            "pdbench.emulator",
            *self.args,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.http_ports[rank]),
            "--disaggregation-bootstrap-port",
            str(self.bootstrap_port),
        ]
        if self.nnodes > 1:
            cmd += [
                "--nnodes",
                str(self.nnodes),
                "--node-rank",
                str(rank),
                "--dist-init-addr",
                f"127.0.0.1:{self.dist_port}",
            ]
        return cmd

    def start(self, watch_health: bool = False) -> Server:
        for rank in range(self.nnodes):
            with open(self.logs[rank], "w") as out:
                self.procs.append(
                    subprocess.Popen(
                        self.command(rank), stdout=out, stderr=subprocess.STDOUT, env=self.env
                    )
                )
            if rank == 0 and watch_health:
                self.statuses = self._health_until_bound()
        return self

    def _health_until_bound(self) -> list[int]:
        seen = []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                seen.append(requests.get(self.url + "/health", timeout=2).status_code)
                return seen
            except requests.ConnectionError:
                time.sleep(0.01)
        return seen

    def wait_ready(self, timeout: float = 20) -> Server:
        def ok():
            try:
                code = requests.get(self.url + "/health", timeout=5).status_code
            except requests.RequestException:
                return False
            self.statuses.append(code)
            return code == 200

        for proc, log in zip(self.procs, self.logs):
            if proc.poll() is not None:
                raise AssertionError(f"{log} exited early:\n{log.read_text()}")
        wait_for(ok, timeout, f"{self.name} to become healthy")
        return self

    def records(self, node: int = 0) -> list[dict]:
        return list(iter_log(self.logs[node]))

    def text(self, node: int = 0) -> str:
        return self.logs[node].read_text()

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


@pytest.fixture
def launch(tmp_path):
    servers: list[Server] = []

    def _launch(name, args, nnodes=1, env=None, watch_health=False, ready=True):
        server = Server(tmp_path, name, args, nnodes, env)
        servers.append(server)
        server.start(watch_health=watch_health)
        if ready:
            server.wait_ready()
        return server

    yield _launch
    for server in servers:
        server.stop()


def decode_args(tp: int, extra: list[str] = ()) -> list[str]:
    return [
        "--model-path",
        "dummy-model",
        "--disaggregation-mode",
        "decode",
        "--tp-size",
        str(tp),
        "--dp-size",
        str(tp),
        "--ep-size",
        str(tp),
        "--enable-dp-attention",
        "--decode-log-interval",
        "1",
        *extra,
    ]


def decode_by_rank(records: list[dict]) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    for r in records:
        if r["kind"] == "decode":
            out.setdefault(r["dp"], []).append(r)
    return out


def fire(url: str, payloads: list[dict]) -> list[threading.Thread]:
    """Send /generate requests in the background (results are ignored)."""
    threads = []
    for p in payloads:

        def run(p=p):
            try:
                requests.post(url + "/generate", json=p, timeout=60)
            except requests.RequestException:
                pass

        t = threading.Thread(target=run, daemon=True)
        t.start()
        threads.append(t)
    return threads


# ------------------------------------------------------------------------------ PD cluster


@pytest.fixture
def pd(launch):
    """A 1-node prefill (tp=dp=2) and a 2-node decode (tp=dp=ep=8, 4 per node, cap 4/rank)."""
    prefill = launch(
        "prefill",
        [
            "--model-path",
            "dummy-model",
            "--disaggregation-mode",
            "prefill",
            "--tp",
            "2",
            "--dp",
            "2",
            "--enable-dp-attention",
            "--chunked-prefill-size",
            "1024",
        ],
        env={"PDBENCH_EMULATOR_PREFILL_TOKENS_PER_S": "4000"},
    )
    decode = launch(
        "decode",
        decode_args(8, ["--max-running-requests", "32"]),
        nnodes=2,
        watch_health=True,
        ready=False,
    )
    decode.wait_ready()
    return prefill, decode


def pd_request(prefill: Server, decode: Server, payload: dict, *, stream: bool):
    """What the router does: the same body, with bootstrap fields, to prefill and decode."""
    body = {
        **payload,
        "stream": stream,
        "bootstrap_host": "127.0.0.1",
        "bootstrap_port": prefill.bootstrap_port,
        "bootstrap_room": random.getrandbits(63),
    }
    with ThreadPoolExecutor(2) as pool:
        p = pool.submit(requests.post, prefill.url + "/generate", json=body, timeout=30)
        d = pool.submit(
            requests.post, decode.url + "/generate", json=body, timeout=30, stream=stream
        )
        d_resp = d.result()
        if stream:
            chunks = [line for line in d_resp.iter_lines() if line]
        else:
            chunks = None
        assert p.result().status_code == 200
    return d_resp, chunks


def test_pd_cluster_api_and_logs(pd, tmp_path):
    prefill, decode = pd
    assert decode.statuses[0] == 503 and decode.statuses[-1] == 200

    resp, chunks = pd_request(
        prefill,
        decode,
        {"text": "hello " * 40, "sampling_params": {"max_new_tokens": 6}},
        stream=True,
    )
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    assert chunks[-1] == b"data: [DONE]"
    events = [json.loads(c[len(b"data: ") :]) for c in chunks[:-1]]
    assert [e["meta_info"]["completion_tokens"] for e in events] == [1, 2, 3, 4, 5, 6]
    assert events[-1]["meta_info"]["finish_reason"] == {"type": "length", "length": 6}
    assert len(events[-1]["text"]) == 6

    resp, _ = pd_request(
        prefill,
        decode,
        {"input_ids": [1, 2, 3, 4], "sampling_params": {"max_new_tokens": 3}},
        stream=False,
    )
    out = resp.json()
    meta = out["meta_info"]
    assert (meta["prompt_tokens"], meta["completion_tokens"]) == (4, 3)
    assert set(meta) >= {
        "id",
        "finish_reason",
        "prompt_tokens",
        "completion_tokens",
        "cached_tokens",
        "e2e_latency",
    }

    c = requests.post(
        decode.url + "/v1/completions",
        timeout=10,
        json={
            "model": "dummy-model",
            "prompt": "hi there",
            "max_tokens": 4,
            "bootstrap_host": "2.2.2.2",
            "bootstrap_room": 0,
        },
    ).json()
    assert c["object"] == "text_completion" and c["usage"]["completion_tokens"] == 4
    assert len(c["choices"][0]["text"]) == 4
    models = requests.get(decode.url + "/v1/models", timeout=5).json()
    assert models["data"][0]["id"] == "dummy-model"

    info = requests.get(decode.url + "/server_info", timeout=5).json()
    assert info["emulator"] is True and info["disaggregation_mode"] == "decode"
    assert info["tp_size"] == info["dp_size"] == info["ep_size"] == 8
    assert [s["dp_rank"] for s in info["internal_states"]] == list(range(8))
    assert all(s["effective_max_running_requests_per_dp"] == 4 for s in info["internal_states"])
    assert "last_gen_throughput" in info["internal_states"][0]
    for path in ("/health", "/health_generate", "/ping"):
        assert requests.get(f"http://127.0.0.1:{decode.http_ports[1]}{path}", timeout=5).ok

    # Each node prints the decode lines of the DP ranks it hosts.
    wait_for(lambda: {r["dp"] for r in decode.records(1) if r["kind"] == "decode"}, 5, "node 1 log")
    assert {r["dp"] for r in decode.records(0) if r["kind"] == "decode"} == {0, 1, 2, 3}
    assert {r["dp"] for r in decode.records(1) if r["kind"] == "decode"} == {4, 5, 6, 7}
    assert any(r["kind"] == "ready" for r in decode.records(0))
    assert any(r["kind"] == "prefill" and "bootstrap_req" in r for r in prefill.records())


def test_pd_fill_release_and_multinode_profile(pd, tmp_path):
    prefill, decode = pd
    assert (
        requests.post(decode.url + "/slow_down", json={"forward_sleep_time": 0.15}, timeout=10).text
        == "null"
    )
    assert requests.post(decode.url + "/slow_down", json={}, timeout=10).status_code == 400
    # 48 requests for 32 slots (4 per rank); prefill supplies 20 per second (200-token prompts).
    # Prefill (0.5.23, auto) puts room r on rank r % 2: seeded rooms split 24/24.
    rooms = random.Random(4)
    bodies = [
        {
            "input_ids": list(range(200)),
            "sampling_params": {"max_new_tokens": 40},
            "bootstrap_host": "127.0.0.1",
            "bootstrap_port": prefill.bootstrap_port,
            "bootstrap_room": rooms.getrandbits(63),
        }
        for _ in range(48)
    ]
    fire(prefill.url, bodies)
    fire(decode.url, bodies)

    def full():
        ranks = decode_by_rank(decode.records(0) + decode.records(1))
        return len(ranks) == 8 and all(v[-1]["running_req"] == 4 for v in ranks.values())

    wait_for(full, 20, "every decode rank to reach 4 running requests")
    records = decode.records(0) + decode.records(1)
    sleeps = {r["dp"] for r in records if r["kind"] == "slow_down"}
    assert sleeps == set(range(8))
    for dp, lines in decode_by_rank(records).items():
        batches = [r["running_req"] for r in lines]
        assert max(batches) <= 4, (dp, batches)  # capped at max_running_requests // dp
    growth = [r["running_req"] for r in decode_by_rank(decode.records(0))[0]]
    # The batch grows as prefill supplies requests: through at least two sizes below the
    # cap (how many arrive between two decode lines depends on the host's load).
    assert len({b for b in growth if 0 < b < 4}) >= 2 and growth[-1] == 4, growth
    assert any(
        r.get("queue_req", 0) > 0 or r.get("transfer_req", 0) > 0
        for r in records
        if r["kind"] == "decode"
    )

    requests.post(decode.url + "/slow_down", json={"forward_sleep_time": None}, timeout=10)
    n_sleep = sum(1 for r in decode.records(0) if r["kind"] == "slow_down")
    time.sleep(0.5)
    assert sum(1 for r in decode.records(0) if r["kind"] == "slow_down") == n_sleep

    # Profile the running batch on both nodes; wait for the last requests to drain first.
    def drained():
        loads = requests.get(decode.url + "/v1/loads", timeout=5).json()["loads"]
        return all(x["num_running_reqs"] == x["num_waiting_reqs"] == 0 for x in loads)

    wait_for(drained, 20, "the fill requests to finish")
    traces = tmp_path / "traces"
    bodies = [
        {
            "input_ids": [1] * 50,
            "sampling_params": {"max_new_tokens": 400},
            "bootstrap_host": "2.2.2.2",
            "bootstrap_room": 0,
        }
        for _ in range(16)
    ]
    fire(decode.url, bodies)

    def two_each():
        ranks = decode_by_rank(decode.records(0) + decode.records(1))
        return len(ranks) == 8 and all(v[-1]["running_req"] == 2 for v in ranks.values())

    wait_for(two_each, 20, "2 running requests per rank")
    r = requests.post(
        decode.url + "/start_profile",
        timeout=20,
        json={"output_dir": str(traces), "num_steps": 5, "profile_id": "pdtest"},
    )
    assert r.status_code == 200 and r.text == "Start profiling.\n"
    wait_for(
        lambda: sum(1 for x in decode.records(0) + decode.records(1) if x["kind"] == "profile_done")
        == 8,
        20,
        "profiling done on all ranks",
    )
    names = sorted(p.name for p in traces.iterdir())
    assert names == sorted(f"pdtest-TP-{t}-DP-{t}-EP-{t}.trace.json.gz" for t in range(8))
    for t in (0, 5):
        st = step_time(traces / f"pdtest-TP-{t}-DP-{t}-EP-{t}.trace.json.gz")
        assert st["method"] == "step_spans" and st["batch_sizes"] == [2] * 5
        assert st["median_ms"] == pytest.approx(step_ms(2), rel=0.01)
    result = measure(decode.logs, traces, decode_gpus=8, profile_id="pdtest")
    assert result["global_batch"] == 16
    assert result["tokens_per_s_per_gpu"] == pytest.approx(16 / (step_ms(2) / 1e3) / 8, rel=0.01)
    # The ground truth is in node 0's log only, never beside the traces.
    assert "emulator ground truth" in decode.text(0)
    assert not any("ground" in p.name for p in traces.iterdir())


# ------------------------------------------------------------------------------ fidelity


@pytest.mark.parametrize(
    "version, word, trailing, names, method, periods",
    [
        ("0.5.3", "Decode batch.", True, "{id}-TP-{t}.trace.json.gz", "run_batch_frames", 3),
        (
            "0.5.5",
            "Decode batch,",
            True,
            "{id}-TP-{t}-DP-{t}-EP-{t}.trace.json.gz",
            "run_batch_frames",
            3,
        ),
        (
            "0.5.23",
            "Decode batch,",
            False,
            "{id}-TP-{t}-DP-{t}-EP-{t}.trace.json.gz",
            "step_spans",
            4,
        ),
    ],
)
def test_fidelity_per_dialect(launch, tmp_path, version, word, trailing, names, method, periods):
    batch = 3
    # 0.5.2-0.5.7 assert --prefill-round-robin-balance on a DP-attention decode server.
    required = ["--prefill-round-robin-balance"] if dialect_for_version(
        version).decode_requires else []
    server = launch(
        f"d{version}",
        decode_args(
            4,
            ["--max-running-requests", "64", "--disaggregation-transfer-backend", "fake",
             *required],
        ),
        env={"PDBENCH_EMULATOR_SGLANG_VERSION": version},
    )
    fire(
        server.url,
        [
            {"input_ids": [5] * 30, "sampling_params": {"max_new_tokens": 500}}
            for _ in range(4 * batch)
        ],
    )
    wait_for(
        lambda: (
            lambda ranks: len(ranks) == 4
            and all(v[-1]["running_req"] == batch for v in ranks.values())
        )(decode_by_rank(server.records())),
        20,
        f"batch {batch} on every rank",
    )
    traces = tmp_path / f"traces-{version}"
    requests.post(
        server.url + "/start_profile", json={"output_dir": str(traces), "num_steps": 5}, timeout=20
    )
    wait_for(
        lambda: sum(1 for r in server.records() if r["kind"] == "profile_done") == 4,
        20,
        "profiling done",
    )

    lines = [ln for ln in server.text().splitlines() if "Decode batch" in ln]
    assert all(word in ln for ln in lines)
    assert all(ln.endswith(", ") == trailing for ln in lines)
    records = server.records()
    start = next(i for i, r in enumerate(records) if r["kind"] == "profile_start")
    for dp in range(4):
        last = [r for r in records[:start] if r["kind"] == "decode" and r["dp"] == dp][-1]
        assert last["running_req"] == batch
        assert (last["tp"], last["ep"]) == (dp, dp)

    pid = next(r["profile_id"] for r in records if r["kind"] == "profile_start")
    files = sorted(p.name for p in traces.iterdir())
    assert files == sorted(names.format(id=pid, t=t) for t in range(4))
    for name in files:
        assert trace_rank_from_name(name)["profile_id"] == pid
    st = step_time(traces / names.format(id=pid, t=0))
    assert st["method"] == method and st["steps"] == periods
    assert st["median_ms"] == pytest.approx(step_ms(batch), rel=0.01)
    result = measure([server.logs[0]], traces, decode_gpus=4, dp_size=4)
    assert result["global_batch"] == 4 * batch
    truth = 4 * batch / (step_ms(batch) / 1e3) / 4
    assert result["tokens_per_s_per_gpu"] == pytest.approx(truth, rel=0.01)
    assert result["log_step_ms"] == pytest.approx(step_ms(batch), rel=0.05)
    assert not [f for f in result["flags"] if not f.startswith("ranks_found")]


@pytest.mark.parametrize(
    "version", ["0.4.9", "0.5.3", "0.5.4", "0.5.5", "0.5.7", "0.5.8", "0.5.11", "0.5.17", "0.5.23"]
)
def test_every_dialect_line_parses(version):
    d = dialect_for(version)
    prefix = d.rank_prefix(3, 3, 3)
    line = "[2026-01-01 00:00:00%s] %s" % (
        prefix,
        d.decode_line(
            running=7,
            tokens=700,
            token_usage=0.1,
            gen_throughput=123.45,
            queue=2,
            cuda_graph=True,
            pd_decode=True,
            transfer=1,
            iteration=9,
        ),
    )
    rec = parse_line(line)
    assert rec["kind"] == "decode" and rec["running_req"] == 7 and rec["queue_req"] == 2
    assert rec["dp"] == 3 and rec["gen_throughput"] == 123.45
    for pd_prefill in (True, False):
        pline = "[2026-01-01 00:00:00] " + d.prefill_line(
            new_seq=2,
            new_token=300,
            cached_token=0,
            token_usage=0.0,
            running=0,
            queue=4,
            input_throughput=9.5,
            pd_prefill=pd_prefill,
        )
        prec = parse_line(pline)
        assert prec["kind"] == "prefill" and prec["new_token"] == 300
    start = parse_line("[2026-01-01 00:00:00] " + d.profile_start_line("/x", "17.5"))
    assert (start["kind"], start["profile_id"], start["output_dir"]) == (
        "profile_start",
        "17.5",
        "/x",
    )


def test_trace_writer_periods_are_exact(tmp_path):
    d = dialect_for("0.5.23")
    t0, steps = 1000.0, []
    for i, (sleep, fwd, bs) in enumerate([(0, 0.05, 8)] * 4 + [(0.5, 0.05, 8)]):
        steps.append(
            {
                "ct": i,
                "t0": t0,
                "sleep": sleep,
                "fwd": fwd,
                "kind": "DECODE",
                "bs": [bs, bs],
                "toks": [0, 0],
            }
        )
        t0 += sleep + fwd
    rank = TraceRank(tp=1, dp=1, world_size=2, local_gpu=1, gpus_per_node=2, pid=4242)
    path = tmp_path / "x-TP-1-DP-1-EP-1.trace.json.gz"
    write_trace(
        str(path),
        rank,
        steps,
        d,
        with_stack=True,
        record_shapes=True,
        cpu=True,
        gpu=True,
        cuda_graph_max_bs=16,
        base_ns=0,
    )
    st = step_time(path)
    assert st["layout"] == "kineto" and st["method"] == "step_spans"
    assert st["step_ms"] == pytest.approx([50.0, 50.0, 50.0, 550.0])
    doc = json.loads(gzip.open(path).read())
    assert doc["distributedInfo"]["rank"] == 1 and "deviceProperties" in doc
    old = tmp_path / "x-TP-1.trace.json.gz"
    write_trace(
        str(old),
        rank,
        steps,
        dialect_for("0.5.5"),
        with_stack=False,
        record_shapes=False,
        cpu=True,
        gpu=True,
        cuda_graph_max_bs=16,
        base_ns=0,
    )
    assert step_time(old)["method"] == "cuda_graph_launch"


# ------------------------------------------------------------------------------ failures


def test_lost_node_stops_node_zero(launch):
    server = launch("lost", decode_args(2), nnodes=2)
    server.procs[1].kill()
    t0 = time.monotonic()
    code = server.procs[0].wait(10)
    assert code != 0 and time.monotonic() - t0 < 10
    assert "lost node rank 1" in server.text(0)


def test_bad_init_expert_location(tmp_path):
    bad = tmp_path / "garbage.json"
    bad.write_text('{"something": 1}')
    for location in (str(tmp_path / "missing.json"), str(bad)):
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "pdbench.emulator",
                *decode_args(2),
                "--port",
                str(free_ports(1)[0]),
                "--init-expert-location",
                location,
            ],
            capture_output=True,
            text=True,
            timeout=20,
            env={**os.environ, **FAST_ENV},
        )
        assert proc.returncode != 0
        assert location in proc.stdout + proc.stderr


def test_flags_rejected_by_the_emulated_version():
    env = {"PDBENCH_EMULATOR_SGLANG_VERSION": "0.5.23"}
    proc = subprocess.run(
        [sys.executable, "-m", "pdbench.emulator", "--cuda-graph-bs", "8"],
        capture_output=True,
        text=True,
        timeout=20,
        env={**os.environ, **env},
    )
    assert proc.returncode == 2 and "ambiguous option: --cuda-graph-bs" in proc.stderr
    cfg = parse_args(
        ["--enable-deepep-moe", "--tp", "8"], env={"PDBENCH_EMULATOR_SGLANG_VERSION": "0.5.3"}
    )
    assert cfg.ep == 8
    assert Knobs.from_env({}).step_base_ms + 768 * Knobs.from_env(
        {}
    ).step_per_req_ms == pytest.approx(100.0)


# ------------------------------------------------------------------------------ EPLB, quirks


def test_expert_distribution_and_static_eplb(launch, tmp_path):
    plain = launch("norec", decode_args(2))
    r = requests.post(plain.url + "/dump_expert_distribution_record", timeout=10)
    assert r.status_code == 500
    assert "Please set ServerArgs.expert_distribution_recorder_mode" in r.text

    rec_dir = tmp_path / "eplb"
    rec = launch(
        "rec",
        decode_args(
            2,
            [
                "--expert-distribution-recorder-mode",
                "stat",
                "--expert-distribution-recorder-buffer-size",
                "-1",
            ],
        ),
        env={"SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR": str(rec_dir)},
    )
    assert requests.post(rec.url + "/start_expert_distribution_record", timeout=10).ok
    requests.post(
        rec.url + "/generate",
        timeout=10,
        json={"input_ids": [[1, 2]] * 4, "sampling_params": {"max_new_tokens": 5}},
    )
    assert requests.post(rec.url + "/dump_expert_distribution_record", timeout=10).ok
    (dump,) = rec_dir.glob("expert_distribution_recorder_*.pt")
    counts = read_dump(dump).logical_count  # one row per recorded forward pass
    assert counts.shape[1:] == (61, 256) and counts.shape[0] >= 4  # 5 tokens: 4 decode steps
    assert counts[:, 10].sum() > 0 and counts[:, 0].sum() == 0
    assert "Write expert distribution to" in rec.text()

    static = launch("static", decode_args(2, ["--init-expert-location", str(dump)]))
    info = requests.get(static.url + "/server_info", timeout=5).json()
    assert info["init_expert_location"] == str(dump)
    warm = [r for r in static.records() if r["kind"] == "decode" and r["dp"] == 0]
    # the MoE half of the step shrinks with the balanced placement's imbalance
    factor = 0.5 + 0.5 * moe_imbalance("dummy-model", 2, True) / moe_imbalance("dummy-model",
                                                                               2, False)
    assert factor < 0.99
    assert warm[-1]["gen_throughput"] == pytest.approx(1000 / step_ms(1, factor), rel=0.01)


@pytest.mark.parametrize("ep", [8, 16, 48])
def test_balanced_placement_lowers_the_imbalance(ep):
    trivial = moe_imbalance("dummy-model", ep, False)
    balanced = moe_imbalance("dummy-model", ep, True)
    assert 1.0 <= balanced < trivial


def test_online_eplb_rebalances_every_n_passes(launch):
    server = launch("online", decode_args(2, ["--enable-eplb", "--eplb-rebalance-num-iterations",
                                              "3"]))
    for _ in range(2):
        requests.post(server.url + "/generate", timeout=10,
                      json={"input_ids": [1, 2], "sampling_params": {"max_new_tokens": 5}})
    text = server.text()
    assert text.count("[EPLBManager] rebalance start") >= 2  # per rank with a line, per rebalance
    assert "[EPLBManager] rebalance end" in text
    factor = 0.5 + 0.5 * moe_imbalance("dummy-model", 2, True) / moe_imbalance("dummy-model",
                                                                               2, False)
    warm = [r for r in server.records() if r["kind"] == "decode" and r["dp"] == 0]
    assert warm[-1]["gen_throughput"] == pytest.approx(1000 / step_ms(1, factor), rel=0.01)


def test_plateau_one_short_quirk(launch):
    server = launch(
        "quirk",
        decode_args(2, ["--max-running-requests", "8"]),
        env={
            "PDBENCH_EMULATOR_PLATEAU_ONE_SHORT": "1",
            "PDBENCH_EMULATOR_SGLANG_VERSION": "0.5.17",
        },
    )
    fire(
        server.url,
        [{"input_ids": [1] * 10, "sampling_params": {"max_new_tokens": 300}} for _ in range(12)],
    )
    wait_for(
        lambda: (
            lambda ranks: len(ranks) == 2
            and all(v[-1]["running_req"] == 3 and v[-1]["queue_req"] == 3 for v in ranks.values())
        )(decode_by_rank(server.records())),
        15,
        "a plateau at 3 of 4 with 3 queued",
    )
    time.sleep(0.3)
    assert max(r["running_req"] for r in server.records() if r["kind"] == "decode") == 3


def test_plain_server_and_recorded_flags(launch):
    server = launch(
        "plain",
        [
            "--model-path",
            "dummy-model",
            "--tp",
            "1",
            "--decode-log-interval",
            "1",
            "--some-future-flag",
            "7",
            "--bare-flag",
            "--cuda-graph-bs-decode",
            "1",
            "2",
            "4",
        ],
    )
    out = requests.post(
        server.url + "/generate",
        timeout=10,
        json={"text": "abc " * 20, "sampling_params": {"max_new_tokens": 3}},
    ).json()
    assert out["meta_info"]["completion_tokens"] == 3
    info = requests.get(server.url + "/get_server_info", timeout=5).json()
    assert info["some_future_flag"] == 7 and info["bare_flag"] is True
    assert info["emulator_unrecognized_args"] == {"some_future_flag": 7, "bare_flag": True}
    assert info["disaggregation_mode"] is None
    kinds = [r["kind"] for r in server.records()]
    assert "prefill" in kinds and "decode" in kinds
    text = server.text()
    assert "flags recorded but not emulated" in text and "some_future_flag" in text
    assert "Endpoint '/get_server_info' is deprecated" in text


def test_decode_without_round_robin_balance_dies_like_0_5_5_post2():
    """SGLang 0.5.2-0.5.7 assert it for a DP-attention decode server; 0.5.8 dropped the assertion."""
    argv = decode_args(4, ["--max-running-requests", "64"])
    env = {"PDBENCH_EMULATOR_SGLANG_VERSION": "0.5.5.post2"}
    with pytest.raises(StartupError, match="Prefill round robin balance is required"):
        parse_args(argv, env)
    assert parse_args([*argv, "--prefill-round-robin-balance"], env).dp == 4
    assert parse_args(argv, {"PDBENCH_EMULATOR_SGLANG_VERSION": "0.5.8"}).dp == 4
    assert parse_args(decode_args(1), env).dp == 1  # no DP attention: no assertion


def test_requests_reaching_the_context_length_are_refused_like_sglang(launch):
    """input + max_new_tokens >= --context-length: 400 with the tokenizer manager's text."""
    server = launch(
        "ctx",
        decode_args(2, ["--context-length", "64", "--disaggregation-transfer-backend", "fake",
                        "--max-running-requests", "8"]),
        env={"PDBENCH_EMULATOR_SGLANG_VERSION": "0.5.8"},
    )
    too_long = requests.post(f"{server.url}/generate", json={
        "input_ids": [5] * 30, "sampling_params": {"max_new_tokens": 34}}, timeout=30)
    assert too_long.status_code == 400
    assert too_long.json()["error"]["message"].startswith(
        "Requested token count exceeds the model's maximum context length of 64 tokens. "
        "You requested a total of 64 tokens: 30 tokens from the input messages and 34 "
        "tokens for the completion.")
    fits = requests.post(f"{server.url}/generate", json={
        "input_ids": [5] * 30, "sampling_params": {"max_new_tokens": 33}}, timeout=30)
    assert fits.status_code == 200


@pytest.mark.parametrize("version, error_keys, log_head", [
    ("0.4.6.post3", {"message"}, "] Error: Requested token count"),
    ("0.5.9", {"message"}, "] [http_server] Error: Requested token count"),
    ("0.5.17", {"message", "type", "code", "retryable"},
     "] [http_server] Error: Requested token count"),
])
def test_a_streamed_request_past_the_context_is_refused_inside_a_200(launch, version,
                                                                     error_keys, log_head):
    """SGLang 0.5.17 on an H100: a streamed /generate past the context length is answered
    200 with one error event and [DONE] (bench_serving counts it a success), and the
    server logs the refusal; not streamed, 400."""
    server = launch(
        f"ctx-stream-{version}",
        decode_args(1, ["--context-length", "64", "--disaggregation-transfer-backend", "fake",
                        "--max-running-requests", "8"]),
        env={"PDBENCH_EMULATOR_SGLANG_VERSION": version},
    )
    body = {"input_ids": [5] * 30, "sampling_params": {"max_new_tokens": 40}, "stream": True}
    answer = requests.post(f"{server.url}/generate", json=body, timeout=30)
    assert answer.status_code == 200
    events = [line[len("data: "):] for line in answer.text.splitlines() if line]
    assert events, (answer.status_code, answer.headers, answer.text, server.text()[-3000:])
    assert events[-1] == "[DONE]" and len(events) == 2
    error = json.loads(events[0])["error"]
    assert set(error) == error_keys and error["message"].startswith("Requested token count")
    refused = [line for line in server.text().splitlines() if log_head in line]
    assert len(refused) == 1, server.text()[-2000:]
    body["stream"] = False
    assert requests.post(f"{server.url}/generate", json=body, timeout=30).status_code == 400


# ------------------------------------------------------------------------------ snapshots


# version: (how the snapshot asks, trace name, the reader's method). num_steps is 4 in every
# row: each trace must hold exactly 4 batches, so 3 step periods.
SNAPSHOT_MODES = {
    "0.4.9": ("immediate", "{id}-TP-{t}.trace.json.gz", "run_batch_frames"),
    "0.5.5": ("start_step", "{id}-TP-{t}-DP-{t}-EP-{t}.trace.json.gz", "run_batch_frames"),
    "0.5.9": ("start_step", "{id}-TP-{t}-DP-{t}-EP-{t}.trace.json.gz", "run_batch_frames"),
    "0.5.14": ("by_stage", "{id}-TP-{t}-DP-{t}-EP-{t}-DECODE.trace.json.gz", "step_spans"),
    "0.5.23": ("by_stage", "{id}-TP-{t}-DP-{t}-EP-{t}-DECODE.trace.json.gz", "step_spans"),
}


@pytest.mark.parametrize("version", sorted(SNAPSHOT_MODES, key=Version))
def test_snapshot_request_per_release(launch, tmp_path, version):
    """pdbench's own /start_profile body for the release: the files have the release's
    names, and each rank's trace holds exactly num_steps batches."""
    from pdbench.commands import control_request

    mode, names, method = SNAPSHOT_MODES[version]
    dialect = dialect_for_version(version)
    assert dialect.decode_snapshot == mode
    required = ["--prefill-round-robin-balance"] if dialect.decode_requires else []
    server = launch(
        f"s{version}",
        decode_args(2, ["--max-running-requests", "32", "--disaggregation-transfer-backend",
                        "fake", *required]),
        env={"PDBENCH_EMULATOR_SGLANG_VERSION": version},
    )
    fire(server.url, [{"input_ids": [5] * 30, "sampling_params": {"max_new_tokens": 500}}
                      for _ in range(4)])
    wait_for(lambda: (lambda ranks: len(ranks) == 2 and all(
        v[-1]["running_req"] == 2 for v in ranks.values()))(decode_by_rank(server.records())),
        20, "batch 2 on every rank")
    traces = tmp_path / f"traces-{version}"
    req = control_request("start_profile", server.url, dialect=dialect, output_dir=traces,
                          num_steps=4, with_stack=True, **dialect.decode_snapshot_options())
    assert ("profile_by_stage" in req.body, "start_step" in req.body) == (
        mode == "by_stage", mode == "start_step")
    requests.post(req.url, json=req.body, timeout=20).raise_for_status()
    wait_for(lambda: sum(1 for r in server.records() if r["kind"] == "profile_done") == 2,
             20, "profiling done")
    pid = next(r["profile_id"] for r in server.records() if r["kind"] == "profile_start")
    assert sorted(p.name for p in traces.iterdir()) == [names.format(id=pid, t=t)
                                                        for t in range(2)]
    for t in range(2):
        st = step_time(traces / names.format(id=pid, t=t))
        assert (st["method"], st["steps"]) == (method, 3)
        assert st["median_ms"] == pytest.approx(step_ms(2), rel=0.01)


@pytest.mark.parametrize("version, crashes", [("0.5.9", True), ("0.5.14", False)])
def test_by_stage_on_pd_decode_crashes_before_0_5_14(launch, tmp_path, version, crashes):
    server = launch(
        f"c{version}",
        decode_args(2, ["--max-running-requests", "32", "--disaggregation-transfer-backend",
                        "fake"]),
        env={"PDBENCH_EMULATOR_SGLANG_VERSION": version},
    )
    fire(server.url, [{"input_ids": [5] * 30, "sampling_params": {"max_new_tokens": 200}}
                      for _ in range(2)])
    wait_for(lambda: decode_by_rank(server.records()), 20, "decoding")
    requests.post(server.url + "/start_profile", timeout=20, json={
        "output_dir": str(tmp_path / "t"), "num_steps": 3, "profile_by_stage": True})
    crashed = "unsupported profile stage: ForwardMode.PREBUILT"
    if crashes:
        wait_for(lambda: crashed in server.text(), 20, "the by-stage crash")
    else:
        wait_for(lambda: sum(1 for r in server.records() if r["kind"] == "profile_done") == 2,
                 20, "profiling done")
        assert crashed not in server.text()


@pytest.mark.parametrize("version, merges", [("0.5.2", False), ("0.5.5", True), ("0.5.23", True)])
def test_merge_profiles_per_release(launch, tmp_path, version, merges):
    from pdbench.errors import InputError
    from pdbench.trace import traces_for

    required = ["--prefill-round-robin-balance"] if dialect_for_version(
        version).decode_requires else []
    server = launch(
        f"m{version}",
        decode_args(2, ["--max-running-requests", "32", "--disaggregation-transfer-backend",
                        "fake", *required]),
        env={"PDBENCH_EMULATOR_SGLANG_VERSION": version},
    )
    fire(server.url, [{"input_ids": [5] * 30, "sampling_params": {"max_new_tokens": 500}}
                      for _ in range(4)])
    wait_for(lambda: len(decode_by_rank(server.records())) == 2, 20, "decoding")
    traces = tmp_path / "t"
    requests.post(server.url + "/start_profile", timeout=20, json={
        "output_dir": str(traces), "num_steps": 4, "merge_profiles": True}).raise_for_status()
    wait_for(lambda: sum(1 for r in server.records() if r["kind"] == "profile_done") == 2,
             20, "profiling done")
    pid = next(r["profile_id"] for r in server.records() if r["kind"] == "profile_start")
    merged = traces / f"merged-{pid}.trace.json.gz"
    assert merged.exists() is merges
    done = [r for r in server.records() if r["kind"] == "profile_done"]
    assert [bool(r.get("merge_message")) for r in done] == [merges, False]
    assert sorted(traces_for(traces, pid)) == [0, 1]  # the rank files, never the merged one
    if merges:
        assert f"Merged trace: {merged} (Events: " in done[0]["merge_message"]
        assert done[0]["merge_message"].endswith("Files: 2)")
        with pytest.raises(InputError, match="several ranks"):
            step_time(merged)
@pytest.mark.parametrize(
    ("version", "bodies", "batch"),
    [
        # 0.5.5.post2 decode: bootstrap_room % dp (rooms 1, 5, 9 -> rank 1; 2 -> rank 2).
        ("0.5.5.post2", [{"bootstrap_room": r} for r in (1, 5, 9, 2)], {1: 3, 2: 1}),
        # 0.5.23 decode (auto): a counter whatever the room; routed_dp_rank wins.
        ("0.5.23", [{"bootstrap_room": 1}] * 4 + [{"bootstrap_room": 1, "routed_dp_rank": 3}],
         {0: 1, 1: 1, 2: 1, 3: 2}),
        # 0.5.15 has no data_parallel_rank field: the counter decides.
        ("0.5.15", [{"bootstrap_room": 1, "data_parallel_rank": 3}] * 2, {0: 1, 1: 1}),
    ],
)
def test_decode_rank_choice_over_http(launch, version, bodies, batch):
    """Through /generate: each release's rule and body key decide the DP rank."""
    extra = ["--max-running-requests", "64", "--disaggregation-transfer-backend", "fake"]
    if dialect_for_version(version).decode_requires:
        extra.append("--prefill-round-robin-balance")
    server = launch(f"route{version}", decode_args(4, extra),
                    env={"PDBENCH_EMULATOR_SGLANG_VERSION": version})
    warmed = len(server.records())  # the warm-up's lines come before
    fire(server.url, [{"input_ids": [5] * 30, "sampling_params": {"max_new_tokens": 2000},
                       "bootstrap_host": "2.2.2.2", **body} for body in bodies])

    def latest():
        ranks = decode_by_rank(server.records()[warmed:])
        return {dp: lines[-1]["running_req"] for dp, lines in ranks.items()}

    wait_for(lambda: sum(latest().values()) == len(bodies), 20, "every request running")
    assert {dp: n for dp, n in latest().items() if n} == batch


@pytest.mark.parametrize("ep, redundant", [(8, 0), (8, 8), (48, 32)])
def test_redundant_experts_balance_further_and_the_trivial_placement_wraps(ep, redundant):
    from pdbench.emulator.experts import _popularity, _rank_loads

    weights = _popularity(10, 256)
    for balanced in (False, True):
        loads = _rank_loads(weights, ep, balanced, redundant)
        assert len(loads) == ep and sum(loads) == pytest.approx(1.0)
    # trivial with R redundant: slot i holds expert i mod 256, so experts 0..R-1 have a
    # second replica and each replica carries half; rank 0 hosts the first slots
    per_rank = -(-(256 + redundant) // ep)
    expected = sum(weights[e] / (2 if e < redundant else 1) for e in range(per_rank))
    assert _rank_loads(weights, ep, False, redundant)[0] == pytest.approx(expected)
    assert (moe_imbalance("dummy-model", ep, True, redundant)
            <= moe_imbalance("dummy-model", ep, True, 0))
