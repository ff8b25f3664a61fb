"""The rendered commands of the rehearsal work together on localhost, without Slurm.

An emulated prefill server (1 node, tp = dp = ep = 4) and an emulated 2-node decode server
(tp = dp = ep = 8) run the argvs that ``pdbench.commands.server_argvs`` renders from
config/config.yaml + config/rehearsal.yaml (on three fake node names, every address
127.0.0.1, a free ``ports.shared_host_base``), with ``server_env``'s environment. Each
real router generation (``router_argv``: sglang-router 0.3.2, its MiniLB, smg 1.13.0) and
the real ``sglang.bench_serving`` client (``client_argv``) from .venv-sglang then run a
small workload through them. ``bench_one_batch_server`` of the installed release (0.5.23)
reads ``/server_info``, which no router serves: the config refuses that pair, and the
test shows each router's answer at the server-info paths that decide it
(``pdbench.routers``). The configured release's own ``bench_one_batch_server``
(0.5.5.post2) runs as the chain overlays ``chain-one-batch-*.yaml`` render it: its own
interpreter (``workload.python``, from ``scripts/sglang-release-python``) and environment.

Every process runs in its own process group and is stopped by a fixture finalizer, also
when a test fails. Ports are never fixed: another run may share the machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from pdbench import commands, config, launch_checks, topology
from pdbench.benchresult import summarize
from pdbench.errors import ConfigError
from pdbench.layout import node_log_name
from pdbench.loglines import iter_log
from pdbench.routers import (
    AGGREGATE_INFO,
    ROUTER_SUMMARY,
    WORKER_INFO,
    router_dialect,
    worker_failures,
    worker_ready_count,
)

from .helpers import (
    REPO,
    SGLANG_PYTHON,
    TINY_MODEL,
    Processes,
    free_shared_host_base,
    http_status,
    rehearsal_config,
    skip_or_fail,
    small_point_overrides,
    tail,
    wait_for,
)

pytestmark = [pytest.mark.sglang, pytest.mark.slow]

NODES = ["fake-node-a", "fake-node-b", "fake-node-c"]
PROMPTS, INPUT_LEN, OUTPUT_LEN = 32, 64, 16
SERVER_READY_S = 60
ROUTER_READY_S = 90
CLIENT_TIMEOUT_S = 180

# The clients ask the Hugging Face Hub about the served model name ("tiny-deepseek"),
# which is not a local path; offline, each lookup retries for ~23 s before giving up.
# The test machine has no network, so the clients run with the Hub switched off.
CLIENT_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@pytest.fixture(scope="module", autouse=True)
def _sglang_side():
    if not SGLANG_PYTHON.exists():
        skip_or_fail(f"{SGLANG_PYTHON} missing (scripts/setup-sglang-venv creates .venv-sglang)")
    if not (TINY_MODEL / "tokenizer.json").exists():
        skip_or_fail(f"{TINY_MODEL} missing (scripts/make-tiny-model builds it)")
    probe = subprocess.run(
        [
            str(SGLANG_PYTHON),
            "-c",
            "import importlib.util as u, sys; "
            "missing = [m for m in ('sglang', 'sglang_router', 'smg', 'pdbench.emulator') "
            "if u.find_spec(m) is None]; print(' '.join(missing)); sys.exit(1 if missing else 0)",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if probe.returncode != 0:
        skip_or_fail(f".venv-sglang lacks {probe.stdout.strip() or probe.stderr.strip()}")


@pytest.fixture
def procs():
    p = Processes()
    yield p
    p.stop_all()


def make_deployment(*overrides: dict):
    """Validated config, its single point and the plan on 3 fake nodes at 127.0.0.1."""
    base, (prometheus,) = free_shared_host_base([1], 2, extra=1)
    cfg = rehearsal_config(small_point_overrides(base, prometheus), *overrides)
    (point,) = config.grid_points(cfg)
    plan = topology.plan(point, NODES, cfg["ports"], {n: "127.0.0.1" for n in NODES})
    assert plan.shared_host and len(plan.decode.nodes) == 2 and len(plan.prefill) == 1
    return cfg, point, plan


def start_server(procs: Processes, cfg, point, plan, name: str, tmp_path: Path) -> list[Path]:
    """Start every node of server ``name`` from its rendered argv; return the node logs."""
    server = plan.server(name)
    env = {**os.environ, **commands.server_env(cfg, server.role, shared_dir=tmp_path)}
    logs = []
    for rank, argv in enumerate(commands.server_argvs(cfg, point, plan, name)):
        assert argv[0] == cfg["site"]["python"] == ".venv-sglang/bin/python"
        assert argv[1:3] == ["-m", "pdbench.emulator"]
        log = tmp_path / "logs" / node_log_name(f"launch_server_{name}", rank)
        procs.start(f"{name} node {rank}", argv, log, env=env, cwd=REPO)
        logs.append(log)
    return logs


def wait_healthy(procs: Processes, plan, names: list[str], logs: dict[str, list[Path]]):
    """Node 0 of each server answers /health 200, and so does every other node's dummy."""
    for name in names:
        for node, log in zip(plan.server(name).nodes, logs[name]):
            wait_for(
                lambda: http_status(f"{node.url}/health") == 200,
                SERVER_READY_S,
                f"{name} node {node.rank} at {node.url}/health",
                check=procs.check_alive,
                detail=lambda: tail(log),
            )


def run_client(
    argv: list[str], tmp_path: Path, name: str, env: dict | None = None
) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    try:
        cp = subprocess.run(
            argv,
            cwd=REPO,
            env={**os.environ, **CLIENT_ENV, **(env or {})},
            capture_output=True,
            text=True,
            timeout=CLIENT_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(
            f"{name} did not finish within {CLIENT_TIMEOUT_S} s:\n{(exc.stdout or b'')[-3000:]!r}"
        ) from None
    (tmp_path / f"{name}.log").write_text(cp.stdout + "\n--- stderr ---\n" + cp.stderr)
    return cp, time.monotonic() - start


def last_jsonl(path: Path) -> dict:
    assert path.exists(), f"the client wrote no {path}"
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one result line in {path}, got {len(lines)}"
    return json.loads(lines[0])


def decode_ranks(log: Path) -> dict[int, list[dict]]:
    by_rank: dict[int, list[dict]] = {}
    for record in iter_log(log):
        if record["kind"] == "decode":
            by_rank.setdefault(record["dp"], []).append(record)
    return by_rank


# (router.implementation, router.mini_lb): every router generation pdbench launches.
ROUTERS = [
    pytest.param("sglang-router", False, id="sglang-router"),
    pytest.param("sglang-router", True, id="sglang-router-minilb"),
    pytest.param("smg", False, id="smg"),
]


def start_router(procs: Processes, cfg, plan, tmp_path: Path) -> Path:
    """Start the rendered router and wait until it is ready the way pdbench.servers
    waits (the generation's readiness path; MiniLB: /health); return its log."""
    gen = router_dialect(cfg)
    mini_lb = cfg["router"]["mini_lb"]
    router_argv = commands.router_argv(cfg, plan)
    assert router_argv[:3] == [".venv-sglang/bin/python", "-m", gen.module]
    assert ("--mini-lb" in router_argv) == mini_lb
    assert router_argv[-2:] == cfg["router"]["extra_args"]  # the free --prometheus-port
    router_log = tmp_path / "logs" / "router.log"
    procs.start("router", router_argv, router_log, cwd=REPO)
    path = gen.mini_lb_readiness_path if mini_lb else gen.readiness_path
    wait_for(
        lambda: http_status(f"{plan.router_url}{path}") == 200,
        ROUTER_READY_S,
        f"the router at {plan.router_url}{path}",
        interval=0.25,
        check=procs.check_alive,
        detail=lambda: tail(router_log),
    )
    if not mini_lb:
        with urllib.request.urlopen(f"{plan.router_url}{path}", timeout=5) as answer:
            body = json.loads(answer.read())
        assert body[gen.healthy_workers_key] == len(plan.prefill) + 1, body
        # Both workers were logged as registered and healthy, none as failed.
        text = router_log.read_text(errors="replace")
        assert worker_ready_count(text, gen) == len(plan.prefill) + 1, tail(router_log)
        assert worker_failures(text, gen) == []
    return router_log


def get_json(url: str) -> tuple[int, object]:
    """Status and body of a GET (the body parsed as JSON where it is JSON)."""
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            status, raw = answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, None
    try:
        return status, json.loads(raw or b"null")
    except json.JSONDecodeError:
        return status, raw.decode(errors="replace")


@pytest.mark.parametrize("implementation, mini_lb", ROUTERS)
def test_router_and_bench_serving_through_rendered_pd_deployment(
    procs, tmp_path, implementation, mini_lb
):
    cfg, point, plan = make_deployment(
        {"workload": {"num_prompts": PROMPTS, "input_len": INPUT_LEN, "output_len": OUTPUT_LEN},
         "router": {"implementation": implementation, "mini_lb": mini_lb}}
    )
    logs = {
        name: start_server(procs, cfg, point, plan, name, tmp_path)
        for name in ("prefill-1", "decode")
    }
    wait_healthy(procs, plan, ["prefill-1", "decode"], logs)
    start_router(procs, cfg, plan, tmp_path)

    output = tmp_path / "bench" / "bench.jsonl"
    output.parent.mkdir()
    argv = commands.client_argv(cfg, point, plan, output_file=output)
    assert argv[:3] == [".venv-sglang/bin/python", "-m", "sglang.bench_serving"]
    assert argv[argv.index("--base-url") + 1] == plan.router_url
    cp, took = run_client(argv, tmp_path, "bench_serving")
    assert cp.returncode == 0, f"bench_serving exited {cp.returncode}:\n{cp.stderr[-3000:]}"
    procs.check_alive()  # no server or router died under the load

    result = last_jsonl(output)
    assert result["completed"] == PROMPTS
    assert result["total_output_tokens"] == PROMPTS * OUTPUT_LEN
    assert result["total_input_tokens"] == PROMPTS * INPUT_LEN
    assert result["backend"] == "sglang" and result["dataset_name"] == "random-ids"
    summary = summarize(result, "bench_serving")
    assert (summary["completed"], summary["total_output_tokens"]) == (PROMPTS,
                                                                      PROMPTS * OUTPUT_LEN)
    keep_result(output, f"bench_serving-0.5.23-{implementation}{'-minilb' * mini_lb}")

    # Every decode node logs its own DP ranks (4 per node), in the grammar pdbench reads.
    decode0, decode1 = decode_ranks(logs["decode"][0]), decode_ranks(logs["decode"][1])
    assert decode0 and set(decode0) <= {0, 1, 2, 3}, tail(logs["decode"][0])
    assert decode1 and set(decode1) <= {4, 5, 6, 7}, tail(logs["decode"][1])
    records = [r for rank in (decode0 | decode1).values() for r in rank]
    assert max(r["running_req"] for r in records) >= 1
    assert all(r["running_req"] <= point.target_batch_per_rank for r in records)
    prefill = [r for r in iter_log(logs["prefill-1"][0]) if r["kind"] == "prefill"]
    assert prefill, tail(logs["prefill-1"][0])
    print(f"{implementation}: bench_serving {took:.1f} s, {result['duration']:.2f} s of benchmark")


# The configured release's own bench_one_batch_server (0.5.5.post2: it reads
# /get_server_info), as the rehearsal's chain overlays configure it: the interpreter of
# scripts/sglang-release-python (the release's code on .venv-sglang's packages, GPU
# kernels as stand-ins) as workload.python, --device cpu, the tiny model's ShareGPT file.
OLD_CLIENT_RELEASE = "0.5.5.post2"
ONE_BATCH_OVERLAYS = {
    name: yaml.safe_load((REPO / "tests" / "data" / "configs" / f"chain-one-batch-{name}.yaml")
                         .read_text())
    for name in ("smg", "minilb")}


@pytest.mark.parametrize("implementation, mini_lb", ROUTERS)
def test_bench_one_batch_server_through_each_router(procs, tmp_path, implementation, mini_lb):
    """What decides whether ``bench_one_batch_server`` works through a router: its
    server-info path (``Dialect.one_batch_server_info_path``) must answer with a worker's
    information (tokenizer_path, internal_states), /flush_cache must answer, and its one
    streamed list-form /generate must come back with every index.

    The installed client (0.5.23) reads /server_info: every router answers 404, the
    config refuses the pair naming both versions, and the client run anyway fails.
    0.5.5.post2's client reads /get_server_info: its rendered command (the chain
    overlays' config, run unchanged) runs end to end through smg and MiniLB, its one
    list-form request filling every decode rank to its target under /slow_down as the
    fill needs, and fails
    through sglang-router's Rust router (a summary of itself), whose pairing the config
    refuses."""
    refused_0_5_23 = {
        "sglang": {"version": "0.5.23"},
        "server_args": {"decode": {"prefill-round-robin-balance": False}},
        "router": {"implementation": implementation, "mini_lb": mini_lb},
        "workload": {"client": "bench_one_batch_server", "dataset": "random-ids"},
    }
    with pytest.raises(ConfigError, match=r"bench_one_batch_server of SGLang 0\.5\.23 reads "
                       r"GET /server_info through the router, and router "
                       rf"{implementation} \d+\.\d+\.\d+.* does not serve it"):
        make_deployment(refused_0_5_23)
    # The 0.5.5.post2 client's config, for a router it works through: a chain overlay's
    # (the same argv goes to the refused router below: the client takes no router flag).
    overlay = ONE_BATCH_OVERLAYS["minilb" if mini_lb else "smg"]
    # The default batch, as the fill sizes it: enough prompts that every decode rank
    # reaches its target (decode picks the rank by each prompt's random bootstrap room).
    workload = {**overlay["workload"], "input_len": INPUT_LEN, "output_len": OUTPUT_LEN}
    cfg, point, plan = make_deployment({"workload": workload, "router": overlay["router"]})
    assert cfg["sglang"]["version"] == OLD_CLIENT_RELEASE
    if (implementation, mini_lb) == ("sglang-router", False):
        with pytest.raises(ConfigError, match=r"bench_one_batch_server of SGLang "
                           r"0\.5\.5\.post2 reads GET /get_server_info through the router, "
                           r"and router sglang-router 0\.3\.2 answers it with a summary"):
            make_deployment({"workload": workload})
        cfg = {**cfg, "router": {**cfg["router"], "implementation": "sglang-router"}}
    gen = router_dialect(cfg)
    logs = {
        name: start_server(procs, cfg, point, plan, name, tmp_path)
        for name in ("prefill-1", "decode")
    }
    wait_healthy(procs, plan, ["prefill-1", "decode"], logs)
    start_router(procs, cfg, plan, tmp_path)

    # The GET routes of the generation's table answer; the others are 404.
    for path in ("/v1/models", "/get_model_info", "/model_info", "/health", "/liveness",
                 "/readiness", "/get_loads", "/workers", "/metrics", "/server_info"):
        status, _ = get_json(f"{plan.router_url}{path}")
        assert (status != 404) == gen.serves_path(path, mini_lb=mini_lb), (path, status)
    status, info = get_json(f"{plan.router_url}/get_server_info")
    assert status == 200 and isinstance(info, dict)
    kind = gen.server_info_kind("/get_server_info", mini_lb=mini_lb)
    tokenizer = info.get("tokenizer_path") or (info.get("prefill") or [{}])[0].get(
        "tokenizer_path")
    works = kind in (WORKER_INFO, AGGREGATE_INFO)
    if works:
        assert tokenizer == cfg["model"]["path"], info
        assert info["internal_states"][0].get("last_gen_throughput") is not None, info
    else:
        assert kind == ROUTER_SUMMARY
        assert tokenizer is None and "internal_states" not in info, info

    flush = urllib.request.Request(f"{plan.router_url}/flush_cache", data=b"", method="POST")
    with urllib.request.urlopen(flush, timeout=10) as answer:
        assert answer.status == 200
    # One streamed request with a list of prompts, as bench_one_batch_server sends it.
    body = {"input_ids": [[1 + i, 2, 3, 4] for i in range(4)],
            "sampling_params": {"max_new_tokens": 3, "ignore_eos": True, "temperature": 0},
            "stream": True}
    request = urllib.request.Request(f"{plan.router_url}/generate",
                                     data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    finished = {}
    with urllib.request.urlopen(request, timeout=60) as answer:
        for raw in answer:
            line = raw.decode().strip()
            if line.startswith("data:") and line != "data: [DONE]":
                chunk = json.loads(line[5:])
                if chunk["meta_info"]["finish_reason"] is not None:
                    finished[chunk["index"]] = chunk["meta_info"]["completion_tokens"]
    assert finished == {i: 3 for i in range(4)}

    # The installed 0.5.23 client, run anyway: it stops at GET /server_info.
    new_output = tmp_path / "bench" / "new.jsonl"
    new_output.parent.mkdir()
    argv = commands.client_argv(cfg, point, plan, output_file=new_output)
    module = argv.index("sglang.bench_one_batch_server")
    argv[:module + 1] = [cfg["site"]["python"], "-m", "sglang.benchmark.one_batch_server"]
    cp, _ = run_client(argv, tmp_path, "one_batch_server-0.5.23")
    assert cp.returncode != 0 and "404" in cp.stdout + cp.stderr, cp.stderr[-2000:]
    assert not new_output.exists()

    # The rendered command itself, as the client step runs it (its interpreter and
    # environment are the config's). It builds a ServerArgs of its own from --model-path
    # (the tiny model's config has the rope_scaling factor 0.5.5.post2 reads) and
    # resolves it on this CPU host; the tokenizer and everything it measures come
    # through the router.
    python = REPO / workload["python"]
    if not python.exists():
        skip_or_fail(f"{python} missing (scripts/sglang-release-python {OLD_CLIENT_RELEASE})")
    model_config = json.loads((REPO / cfg["model"]["path"] / "config.json").read_text())
    if not (REPO / workload["dataset_path"]).exists() or "rope_scaling" not in model_config:
        skip_or_fail(f"{cfg['model']['path']} is from before scripts/make-tiny-model wrote "
                     "its sharegpt.json and rope_scaling (scripts/setup adds them)")
    output = tmp_path / "bench" / "old.jsonl"
    argv = commands.client_argv(cfg, point, plan, output_file=output)
    assert argv[:3] == [workload["python"], "-m", "sglang.bench_one_batch_server"]
    assert argv[-6:] == ["--dataset-name", "random", "--dataset-path",
                         workload["dataset_path"], "--device", "cpu"]
    env = commands.client_env(cfg)
    assert env == {"PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    batch = commands.client_prompts(cfg, point)
    assert argv[argv.index("--batch-size") + 1] == str(batch) and batch > 2 * 32
    if not works:
        cp, took = run_client(argv, tmp_path, f"one_batch_server-{OLD_CLIENT_RELEASE}",
                              env=env)
        procs.check_alive()
        # No tokenizer_path and no prefill list in the router's summary: the client has
        # no tokenizer and stops before its batch.
        assert cp.returncode != 0, cp.stdout[-2000:]
        assert "tokenizer_path" in cp.stderr, cp.stderr[-2000:]
        assert not output.exists() or not output.read_text().strip()
        return
    # As the fill runs it: decode slowed down, then the client's one list-form request;
    # the router gives each prompt its own request and bootstrap room, so every decode
    # rank reaches its target while decode is slow; then the release lets it finish.
    control(commands.control_request("slow_down", plan.decode.url, forward_sleep_time=0.2))
    start = time.monotonic()
    client_log = tmp_path / f"one_batch_server-{OLD_CLIENT_RELEASE}.log"
    target = point.target_batch_per_rank

    def every_rank_full() -> bool:
        ranks = decode_ranks(logs["decode"][0]) | decode_ranks(logs["decode"][1])
        return len(ranks) == 8 and all(max(r["running_req"] for r in records) >= target
                                       for records in ranks.values())

    def client_alive() -> None:
        procs.check_alive()
        assert client.poll() is None, f"the client ended early:\n{tail(client_log)}"

    with open(client_log, "wb") as out:
        client = subprocess.Popen(argv, cwd=REPO, env={**os.environ, **CLIENT_ENV, **env},
                                  stdin=subprocess.DEVNULL, stdout=out,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(every_rank_full, CLIENT_TIMEOUT_S, f"every decode rank at {target} requests",
                 interval=1.0, check=client_alive, detail=lambda: tail(client_log))
        control(commands.control_request("slow_down", plan.decode.url,
                                         forward_sleep_time=None))
        returncode = client.wait(timeout=CLIENT_TIMEOUT_S)
    finally:
        if client.poll() is None:
            os.killpg(client.pid, 9)
            client.wait()
    took = time.monotonic() - start
    assert returncode == 0, tail(client_log)
    procs.check_alive()
    result = last_jsonl(output)
    assert (result["batch_size"], result["input_len"], result["output_len"]) == (
        batch, INPUT_LEN, OUTPUT_LEN)
    summary = summarize(result, "bench_one_batch_server")
    assert summary["completed"] == batch
    assert summary["total_output_tokens"] == batch * OUTPUT_LEN
    keep_result(output, f"bench_one_batch_server-{OLD_CLIENT_RELEASE}-{implementation}"
                        f"{'-minilb' * mini_lb}")
    print(f"{implementation}{' MiniLB' * mini_lb}: bench_one_batch_server "
          f"{OLD_CLIENT_RELEASE} {took:.1f} s")


def control(request: commands.ControlRequest) -> None:
    """Send a control call (``pdbench.commands.control_request``); it must answer 200."""
    data = None if request.body is None else json.dumps(request.body).encode()
    call = urllib.request.Request(request.url, data=data, method=request.method,
                                  headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(call, timeout=10) as answer:
        assert answer.status == 200, (request, answer.status)


def keep_result(output: Path, name: str) -> None:
    """With PDBENCH_KEEP_CLIENT_RESULTS=DIR, copy a client's result line there (how the
    samples under tests/data/client-results were made)."""
    folder = os.environ.get("PDBENCH_KEEP_CLIENT_RESULTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / f"{name}.jsonl").write_text(output.read_text())


def test_bench_one_batch_server_fake_prefill_straight_to_decode(procs, tmp_path, monkeypatch):
    """``workload.client: bench_one_batch_server``'s rendered argv, aimed at the decode
    server itself with ``--fake-prefill`` (no prefill server, no router).

    The client in .venv-sglang is SGLang 0.5.23's, so the config speaks 0.5.23 (its
    /server_info path, the module ``sglang.benchmark.one_batch_server``) and the emulator
    does too. ``--device cpu`` lets its server-argument parsing pass without a GPU, and
    ``--dataset-name random-ids`` keeps its prompts local (its default, ``random``,
    downloads ShareGPT).
    """
    # No router here, so the client/router pairing check (0.5.23's client reads
    # /server_info, which no router serves) does not apply to this deployment.
    monkeypatch.setattr(launch_checks, "_client_through_router", lambda cfg: None)
    cfg, point, plan = make_deployment(
        {
            "sglang": {"version": "0.5.23"},
            "env": {"common": {"PDBENCH_EMULATOR_SGLANG_VERSION": "0.5.23"}},
            # --prefill-round-robin-balance is 0.5.2-0.5.7 only; 0.5.23 has no such option.
            "server_args": {"decode": {"prefill-round-robin-balance": False}},
            "workload": {
                "client": "bench_one_batch_server",
                "batch_size": PROMPTS,
                "input_len": INPUT_LEN,
                "output_len": OUTPUT_LEN,
                "dataset": "random-ids",
                "extra_args": ["--fake-prefill", "--device", "cpu"],
            },
        }
    )
    logs = {"decode": start_server(procs, cfg, point, plan, "decode", tmp_path)}
    wait_healthy(procs, plan, ["decode"], logs)

    output = tmp_path / "bench" / "one_batch.jsonl"
    output.parent.mkdir()
    argv = commands.client_argv(cfg, point, plan, output_file=output)
    assert argv[:3] == [".venv-sglang/bin/python", "-m", "sglang.benchmark.one_batch_server"]
    base_url = argv.index("--base-url") + 1
    assert argv[base_url] == plan.router_url
    argv[base_url] = plan.decode.url
    cp, took = run_client(argv, tmp_path, "bench_one_batch_server")
    assert cp.returncode == 0, (
        f"bench_one_batch_server exited {cp.returncode}:\n{cp.stdout[-1500:]}\n{cp.stderr[-3000:]}"
    )
    procs.check_alive()

    result = last_jsonl(output)
    assert result["batch_size"] == PROMPTS
    assert (result["input_len"], result["output_len"]) == (INPUT_LEN, OUTPUT_LEN)
    assert result["total_output_tokens"] == PROMPTS * OUTPUT_LEN
    assert result["num_early_stopped"] == 0
    summary = summarize(result, "bench_one_batch_server")
    assert summary["completed"] == PROMPTS
    assert summary["total_output_tokens"] == PROMPTS * OUTPUT_LEN
    assert summary["duration_s"] == result["latency"]
    keep_result(output, "bench_one_batch_server-0.5.23-decode")
    decode0, decode1 = decode_ranks(logs["decode"][0]), decode_ranks(logs["decode"][1])
    assert set(decode0) == {0, 1, 2, 3}, tail(logs["decode"][0])
    assert set(decode1) == {4, 5, 6, 7}, tail(logs["decode"][1])
    # The whole batch was admitted at once: 32 requests over 8 ranks at the cap of 4.
    assert max(r["running_req"] for r in decode0[0]) == point.target_batch_per_rank == 4
    print(f"bench_one_batch_server: {took:.1f} s")
