"""Router generations (pdbench.routers): argvs, versions, refused configs and client/router
pairs, the log lines read at launch, and the one reader of both clients' results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pdbench import launch_checks, topology
from pdbench.benchresult import last_line, summarize
from pdbench.commands import client_argv, router_argv
from pdbench.errors import ConfigError, InputError
from pdbench.routers import (
    AGGREGATE_INFO,
    GENERATIONS,
    ROUTER_SUMMARY,
    WORKER_INFO,
    router_dialect,
    worker_failures,
    worker_ready_count,
)

from test_commands import make, plan_of, point_of, raw_default

DATA = Path(__file__).resolve().parent / "data"


# ------------------------------------------------------------------------------- argvs


@pytest.mark.parametrize(
    "router, module, tail",
    [
        ({}, "sglang_router.launch_router", []),
        ({"implementation": "sglang-router", "mini_lb": True}, "sglang_router.launch_router",
         ["--mini-lb"]),
        ({"implementation": "sglang-router", "policy": "power_of_two"},
         "sglang_router.launch_router", ["--policy", "power_of_two"]),
        ({"implementation": "smg"}, "smg.launch_router", []),
        ({"implementation": "smg", "version": "1.14.2", "policy": "least_load"},
         "smg.launch_router", ["--policy", "least_load"]),
    ],
)
def test_router_argv_per_generation(router, module, tail):
    cfg = make(router=router)
    plan = plan_of(cfg, point_of(cfg, groups=2))
    assert router_argv(cfg, plan) == [
        "python3", "-m", module, "--pd-disaggregation",
        "--prefill", "http://gb-001:30000", "8991",
        "--prefill", "http://gb-003:30000", "8991",
        "--decode", "http://gb-005:30000", "--host", "0.0.0.0", "--port", "7000", *tail,
    ]  # fmt: skip


@pytest.mark.parametrize("implementation", sorted(GENERATIONS))
def test_router_metrics_port_on_a_shared_host(implementation):
    """Routers that share one address get router_port + 1 as their metrics port."""
    cfg = make(router={"implementation": implementation})
    point = point_of(cfg, groups=1)
    nodes = topology.expand_nodelist("gb-[001-018]")
    plan = plan_of(cfg, point, nodes, {n: "127.0.0.1" for n in nodes})
    argv = router_argv(cfg, plan)
    flag = GENERATIONS[implementation].metrics_port_flag
    assert argv[argv.index(flag) + 1] == str(plan.router_port + 1)


def test_router_module_override_wins():
    cfg = make(router={"implementation": "smg"}, sglang__router_module="my.router")
    plan = plan_of(cfg, point_of(cfg, groups=1))
    assert router_argv(cfg, plan)[:3] == ["python3", "-m", "my.router"]


# ---------------------------------------------------------------------- config refusals


@pytest.mark.parametrize(
    "router, error",
    [
        ({"implementation": "smg", "mini_lb": True}, "router.mini_lb: smg 1.13.0 has no MiniLB"),
        ({"policy": "least_load"}, "router.policy: sglang-router 0.3.2 has no policy 'least_load'"),
        ({"implementation": "smg", "policy": "bucket"}, "router.policy: smg 1.13.0 has no policy"),
        ({"version": "0.4.0"}, "router.version: sglang-router 0.4.0 is outside what pdbench "
                               "checked"),
        ({"version": "0.2.1"}, "router.version: sglang-router 0.2.1 is outside"),
        ({"implementation": "smg", "version": "1.12.0"}, "router.version: smg 1.12.0 is outside"),
        ({"implementation": "smg", "version": "2.0.0"}, "router.version: smg 2.0.0 is outside"),
        ({"version": "latest"}, "router.version: 'latest' is not a version"),
        ({"implementation": "vllm-router"}, "router.implementation"),
        ({"version": "0.3.1"}, None),
        ({"implementation": "smg", "version": "1.13.0", "policy": "prefix_hash"}, None),
    ],
)
def test_router_config_refusals(router, error):
    if error is None:
        cfg = make(router=router)
        assert router_dialect(cfg).version == router.get("version", "0.3.2")
        return
    with pytest.raises(ConfigError, match=error.replace("(", r"\(").replace(")", r"\)")):
        make(router=router)


def test_router_version_defaults_to_the_checked_release():
    for implementation, gen in GENERATIONS.items():
        cfg = make(router={"implementation": implementation})
        assert router_dialect(cfg).version == gen.checked


# --------------------------------------------------------------- client x router pairs

# What each router answers at /get_server_info (measured by
# tests/integration/test_router_client.py); /server_info is served by none.
ROUTER_ROWS = [
    ("sglang-router", False, ROUTER_SUMMARY),
    ("sglang-router", True, AGGREGATE_INFO),
    ("smg", False, WORKER_INFO),
]


@pytest.mark.parametrize("implementation, mini_lb, answer", ROUTER_ROWS)
def test_server_info_answers(implementation, mini_lb, answer):
    gen = GENERATIONS[implementation]
    assert gen.server_info_kind("/get_server_info", mini_lb=mini_lb) == answer
    assert gen.server_info_kind("/server_info", mini_lb=mini_lb) is None


@pytest.mark.parametrize("implementation, mini_lb, _answer", ROUTER_ROWS)
def test_every_router_serves_what_both_clients_send(implementation, mini_lb, _answer):
    gen = GENERATIONS[implementation]
    for path in ("/generate", "/flush_cache", "/v1/models"):
        assert gen.serves_path(path, mini_lb=mini_lb), path
    assert not gen.serves_path("/server_info", mini_lb=mini_lb)
    assert not gen.serves_path("/metrics", mini_lb=mini_lb)


def _pair_cfg(version: str, implementation: str, mini_lb: bool, client: str,
              dataset: str = "random-ids") -> dict:
    """The parts of a config the pairing check reads."""
    return {"sglang": {"version": version},
            "router": {"implementation": implementation, "version": None, "mini_lb": mini_lb},
            "workload": {"client": client, "dataset": dataset, "dataset_path": None}}


# (SGLang release of the client, dataset it can take): 0.4.6.post3 reads no server info,
# 0.4.7-0.5.13 /get_server_info, 0.5.14+ /server_info.
@pytest.mark.parametrize(
    "version, dataset, works_with",
    [
        ("0.4.6.post3", "random-ids", {"sglang-router", "sglang-router-minilb", "smg"}),
        ("0.4.10", "random-ids", {"sglang-router-minilb", "smg"}),
        ("0.5.5.post2", "random", {"sglang-router-minilb", "smg"}),
        ("0.5.13", "random", {"sglang-router-minilb", "smg"}),
        ("0.5.14", "random-ids", set()),
        ("0.5.23", "random-ids", set()),
    ],
)
@pytest.mark.parametrize("implementation, mini_lb, _answer", ROUTER_ROWS)
def test_bench_one_batch_server_through_each_router(version, dataset, works_with,
                                                    implementation, mini_lb, _answer):
    cfg = _pair_cfg(version, implementation, mini_lb, "bench_one_batch_server", dataset)
    name = implementation + ("-minilb" if mini_lb else "")
    if name in works_with:
        launch_checks._client_through_router(cfg)
        return
    with pytest.raises(ConfigError) as err:
        launch_checks._client_through_router(cfg)
    message = str(err.value)
    assert message.startswith("config key workload.client: bench_one_batch_server of SGLang "
                              f"{version} reads GET ")
    assert f"router {implementation} {GENERATIONS[implementation].checked}" in message
    assert "\n" not in message


@pytest.mark.parametrize("implementation, mini_lb, _answer", ROUTER_ROWS)
@pytest.mark.parametrize("version", ["0.4.6.post3", "0.5.5.post2", "0.5.23"])
def test_bench_serving_goes_through_every_router(implementation, mini_lb, _answer, version):
    launch_checks._client_through_router(
        _pair_cfg(version, implementation, mini_lb, "bench_serving"))


def test_refused_pair_in_the_default_config_names_both_versions():
    with pytest.raises(ConfigError, match=r"bench_one_batch_server of SGLang 0\.5\.5\.post2 reads "
                       r"GET /get_server_info through the router, and router sglang-router "
                       r"0\.3\.2 answers it with a summary of itself"):
        make(workload={"client": "bench_one_batch_server", "dataset": "random"})
    make(router={"implementation": "smg"},
         workload={"client": "bench_one_batch_server", "dataset": "random"})
    make(router={"mini_lb": True},
         workload={"client": "bench_one_batch_server", "dataset": "random"})


# ---------------------------------------------------------- bench_one_batch_server argv


@pytest.mark.parametrize(
    "version, workload, tail, error",
    [
        ("0.4.6.post3", {}, [], None),
        ("0.4.6.post3", {"dataset": "random"}, None, "has no --dataset-name"),
        ("0.5.0rc0", {"dataset_path": "d.json"}, None, "workload.dataset_path"),
        ("0.5.2", {"dataset_path": "d.json"}, ["--dataset-path", "d.json"], None),
        ("0.5.5.post2", {}, None, "has no dataset 'random-ids' (it knows mmmu, random)"),
        ("0.5.5.post2", {"dataset": "random"}, ["--dataset-name", "random"], None),
        ("0.5.14", {}, ["--dataset-name", "random-ids"], None),
        ("0.5.19", {"dataset": "sharegpt"}, None, "has no dataset 'sharegpt'"),
        ("0.5.20", {"dataset": "sharegpt", "dataset_path": "s.json"},
         ["--dataset-name", "sharegpt", "--dataset-path", "s.json"], None),
    ],
)
def test_bench_one_batch_server_dataset_flags(version, workload, tail, error):
    """--dataset-name/--dataset-path as each release's bench_one_batch_server knows them."""
    from pdbench.commands import one_batch_server_dataset_args
    from pdbench.dialects import dialect_for_version

    w = {"dataset": "random-ids", "dataset_path": None, **workload}
    dialect = dialect_for_version(version)
    if error:
        with pytest.raises(ConfigError, match=error.replace("(", r"\(").replace(")", r"\)")):
            one_batch_server_dataset_args(w, dialect)
    else:
        assert one_batch_server_dataset_args(w, dialect) == tail


def test_bench_one_batch_server_argv_for_0_5_23():
    raw = raw_default()
    del raw["server_args"]["decode"]["prefill-round-robin-balance"]
    cfg = make(raw, sglang__version="0.5.23", router={"implementation": "smg"},
               workload={"client": "bench_serving"})
    cfg["workload"]["client"] = "bench_one_batch_server"  # rendered, not validated here
    point = point_of(cfg, groups=1)
    argv = client_argv(cfg, point, plan_of(cfg, point), output_file="/r/o.jsonl")
    assert argv[:3] == ["python3", "-m", "sglang.benchmark.one_batch_server"]
    assert argv[-2:] == ["--dataset-name", "random-ids"]


# ----------------------------------------------------------------------- router logs


@pytest.mark.parametrize(
    "log, implementation, ready, failed",
    [
        ("sglang-router-0.3.2-ready.log", "sglang-router", 2, []),
        ("smg-1.13.0-ready.log", "smg", 2, []),
        ("sglang-router-0.3.2-worker-failed.log", "sglang-router", 0,
         ["http://127.0.0.1:1", "http://127.0.0.1:2"]),
        ("smg-1.13.0-worker-failed.log", "smg", 0, ["http://127.0.0.1:1", "http://127.0.0.1:2"]),
    ],
)
def test_router_log_lines(log, implementation, ready, failed):
    """Real router logs (ANSI colours included): a prefill and a decode worker registered,
    or both unreachable (the router keeps running and logs a failed AddWorker job)."""
    text = (DATA / "router-logs" / log).read_text()
    gen = GENERATIONS[implementation]
    assert worker_ready_count(text, gen) == ready
    assert sorted(worker_failures(text, gen)) == failed


def test_each_generation_reads_only_its_own_ready_line():
    smg_log = (DATA / "router-logs" / "smg-1.13.0-ready.log").read_text()
    old_log = (DATA / "router-logs" / "sglang-router-0.3.2-ready.log").read_text()
    assert worker_ready_count(smg_log, GENERATIONS["sglang-router"]) == 0
    assert worker_ready_count(old_log, GENERATIONS["smg"]) == 0


# ------------------------------------------------------------------ one result reader

RESULTS = DATA / "client-results"


@pytest.mark.parametrize(
    "name, client, expected",
    [
        ("bench_serving-0.5.23-sglang-router.jsonl", "bench_serving",
         {"completed": 32, "total_input_tokens": 2048, "total_output_tokens": 512}),
        ("bench_serving-0.5.23-sglang-router-minilb.jsonl", "bench_serving",
         {"completed": 32, "total_input_tokens": 2048, "total_output_tokens": 512}),
        ("bench_serving-0.5.23-smg.jsonl", "bench_serving",
         {"completed": 32, "total_input_tokens": 2048, "total_output_tokens": 512}),
        ("bench_one_batch_server-0.5.23-decode.jsonl", "bench_one_batch_server",
         {"completed": 32, "total_input_tokens": 2048, "total_output_tokens": 512}),
        # 0.5.5.post2 writes no total_output_tokens: the batch times output_len counts.
        ("bench_one_batch_server-0.5.5.post2-smg.jsonl", "bench_one_batch_server",
         {"completed": 32, "total_input_tokens": 2048, "total_output_tokens": 512}),
        ("bench_one_batch_server-0.5.5.post2-sglang-router-minilb.jsonl",
         "bench_one_batch_server",
         {"completed": 32, "total_input_tokens": 2048, "total_output_tokens": 512}),
    ],
)
def test_one_reader_for_both_clients(name, client, expected):
    """Real outputs of each client (tests/integration/test_router_client.py made them)."""
    line = last_line(RESULTS / name)
    summary = summarize(line, client, source=name)
    assert set(summary) == {"client", "completed", "total_input_tokens",
                            "total_output_tokens", "duration_s", "output_throughput"}
    assert {k: summary[k] for k in expected} == expected
    duration = line["duration"] if client == "bench_serving" else line["latency"]
    assert summary["duration_s"] == duration > 0
    assert summary["output_throughput"] == line["output_throughput"] > 0


def test_old_one_batch_server_line_has_no_token_count():
    line = last_line(RESULTS / "bench_one_batch_server-0.5.5.post2-smg.jsonl")
    assert "total_output_tokens" not in line
    assert summarize(line, "bench_one_batch_server")["total_output_tokens"] == (
        line["batch_size"] * line["output_len"])


@pytest.mark.parametrize(
    "text, client, error",
    [
        ('{"completed": 3}', "bench_serving",
         "not a bench_serving result: no total_output_tokens, duration, output_throughput"),
        ('{"batch_size": 3}', "bench_one_batch_server", "not a bench_one_batch_server result"),
        ('{"completed": "x", "total_output_tokens": 1, "duration": 1, '
         '"output_throughput": 1}', "bench_serving", "is not a number"),
        ("[1, 2]", "bench_serving", "not a JSON object"),
        ("{", "bench_serving", "last line is not JSON"),
        ('{"completed": 1}', "bench_other", "unknown client 'bench_other'"),
    ],
)
def test_reader_refuses_bad_lines(tmp_path, text, client, error):
    path = tmp_path / "out.jsonl"
    path.write_text("{}\n" + text + "\n")
    with pytest.raises(InputError, match=error) as err:
        line = last_line(path)
        summarize(line, client, source=path)
    assert "\n" not in str(err.value)


def test_reader_of_an_absent_or_empty_file(tmp_path):
    assert last_line(tmp_path / "none.jsonl") is None
    (tmp_path / "empty.jsonl").write_text("\n\n")
    assert last_line(tmp_path / "empty.jsonl") is None


def test_sample_results_are_single_lines():
    for path in sorted(RESULTS.glob("*.jsonl")):
        assert len(path.read_text().splitlines()) == 1, path
        json.loads(path.read_text())


@pytest.mark.parametrize(
    "overlay, implementation, mini_lb",
    [("chain-smg.yaml", "smg", False), ("chain-minilb.yaml", "sglang-router", True)],
)
def test_chain_overlays_select_a_router(overlay, implementation, mini_lb):
    """The overlays the Slurm chain can add to chain-small.yaml validate and select their
    router generation."""
    import yaml

    from pdbench import config as config_mod

    def merge(base: dict, layer: dict) -> dict:
        return {**base, **{k: merge(base.get(k, {}), v) if isinstance(v, dict) else v
                           for k, v in layer.items()}}

    raw = raw_default()
    for name in ("chain-small.yaml", overlay):
        raw = merge(raw, yaml.safe_load((DATA / "configs" / name).read_text()))
    cfg = config_mod.validate(raw, workdir=Path(__file__).resolve().parents[1])
    gen = router_dialect(cfg)
    assert (gen.implementation, cfg["router"]["mini_lb"]) == (implementation, mini_lb)
    plan = plan_of(cfg, config_mod.grid_points(cfg)[0],
                   topology.expand_nodelist("n-[1-3]"), {f"n-{i}": "127.0.0.1" for i in (1, 2, 3)})
    assert router_argv(cfg, plan)[2] == gen.module


# ------------------------------------------------------------- readiness at launch


@pytest.fixture
def fake_router():
    """A local HTTP server answering GET PATH with the status and body set in ``routes``."""
    import http.server
    import threading

    routes: dict[str, tuple[int, bytes]] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            status, body = routes.get(self.path, (404, b""))
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", routes
    server.shutdown()
    server.server_close()


READY_2 = (200, b'{"status":"ready","healthy_workers":2,"total_workers":2}')
READY_1 = (200, b'{"status":"ready","healthy_workers":1,"total_workers":2}')
NOT_READY = (503, b'{"status":"not ready","reason":"insufficient healthy workers"}')


@pytest.mark.parametrize("implementation", sorted(GENERATIONS))
@pytest.mark.parametrize(
    "routes, mini_lb, expected, ready",
    [
        ({"/readiness": READY_2}, False, 2, True),
        ({"/readiness": READY_2}, False, 3, False),  # a third server not yet registered
        ({"/readiness": READY_1}, False, 2, False),
        ({"/readiness": NOT_READY}, False, 2, False),
        ({"/readiness": (200, b"OK")}, False, 2, False),
        ({"/readiness": (200, b'{"status":"ready"}')}, False, 2, False),
        ({}, False, 2, False),
        ({"/health": (200, b"")}, True, 2, True),  # MiniLB: no /readiness
        ({"/readiness": READY_2}, True, 2, False),
    ],
)
def test_router_ready(fake_router, tmp_path, implementation, routes, mini_lb, expected, ready):
    from pdbench.servers import router_ready

    url, served = fake_router
    served.update(routes)
    log = tmp_path / "router.log"
    log.write_text((DATA / "router-logs" / f"{implementation}-"
                    f"{GENERATIONS[implementation].checked}-ready.log").read_text())
    gen = GENERATIONS[implementation]
    assert router_ready(url, log, gen, mini_lb=mini_lb, expected=expected) is ready


@pytest.mark.parametrize("implementation", sorted(GENERATIONS))
def test_router_that_could_not_add_a_worker_fails_at_once(fake_router, tmp_path,
                                                          implementation):
    from pdbench.servers import router_ready
    from pdbench.steps import ServerError

    url, served = fake_router
    served["/readiness"] = NOT_READY
    gen = GENERATIONS[implementation]
    log = tmp_path / "router.log"
    log.write_text((DATA / "router-logs" / f"{implementation}-{gen.checked}-worker-failed.log")
                   .read_text())
    with pytest.raises(ServerError, match=rf"router: {implementation} {gen.checked} could not "
                       r"add worker\(s\) http://127\.0\.0\.1:1, http://127\.0\.0\.1:2 "):
        router_ready(url, log, gen, mini_lb=False, expected=2)
    assert router_ready(url, tmp_path / "no-log-yet.log", gen, mini_lb=False,
                        expected=2) is False
