"""The preflight: each check of the compute-node probe failing and passing, the
submitting host's checks, the spec it sends, and what reruns it."""

from __future__ import annotations

import copy
import importlib.util
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pdbench import config, preflight
from pdbench.grid import grid_points

REPO = Path(__file__).resolve().parents[1]
SPEC = importlib.util.spec_from_file_location("preflight_probe", preflight.PROBE)
probe = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(probe)


@pytest.fixture
def cfg():
    return config.load(REPO / "config" / "config.yaml")


@pytest.fixture
def model_dir(tmp_path):
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"architectures": ["DeepseekV3ForCausalLM"]}))
    return d


@pytest.fixture
def spec(tmp_path, model_dir):
    token = tmp_path / "token-submit"
    token.write_text("abc\n")
    return {
        "token": "abc", "return_token": "def", "token_path": str(token),
        "return_token_path": str(tmp_path / "token-node"),
        "server_module": "pdbench.emulator", "sglang_version": "0.5.5.post2",
        "router_module": "json", "router_module_distribution": None,
        "client_module": "json",
        "servers": [{"name": "p1/decode/node0",
                     "args": ["--model-path", str(model_dir), "--disaggregation-mode",
                              "decode", "--tp", "2", "--dp", "2", "--enable-dp-attention",
                              "--prefill-round-robin-balance"]}],
        "model_path": str(model_dir), "architecture": "DeepseekV3ForCausalLM",
        "tokenizer": None,
        "gpu_list_command": ["printf", "GPU 0: a\\nGPU 1: b\\n"], "gpus_per_node": 2,
        "ib_devices": [], "ports": [], "secret_env": [],
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_every_check_passes_on_a_good_spec(spec, monkeypatch):
    monkeypatch.setenv("PDBENCH_EMULATOR_SGLANG_VERSION", "0.5.5.post2")
    spec["ports"] = [_free_port()]
    for name, func, args in [
        ("shared_filesystem", probe.check_shared_filesystem, (spec,)),
        ("sglang_version", probe.check_sglang_version, (spec,)),
        ("router", probe.check_module, (spec, "router_module")),
        ("server_args", probe.check_server_args, (spec, spec["servers"][0])),
        ("model", probe.check_model, (spec,)),
        ("gpus", probe.check_gpus, (spec,)),
        ("ports", probe.check_ports, (spec,)),
    ]:
        result = probe.run(name, func, *args)
        assert result["status"] == "ok", result
    assert Path(spec["return_token_path"]).read_text().strip() == "def"


def _hold_port():
    sock = socket.socket()
    sock.bind(("0.0.0.0", 0))
    sock.listen()
    return sock


# (what breaks, how, the check, words its message must hold)
CASES = [
    ("token unreadable", lambda s, t: s.update(token_path=str(t / "absent")),
     "shared_filesystem", "not readable here"),
    ("token differs", lambda s, t: s.update(token="xyz"), "shared_filesystem",
     "other content"),
    ("token not writable", lambda s, t: s.update(return_token_path=str(t / "no" / "dir")),
     "shared_filesystem", "cannot write"),
    ("emulated release differs", lambda s, t: s.update(sglang_version="0.5.8"),
     "sglang_version", "config says 0.5.8"),
    ("server module is neither", lambda s, t: s.update(server_module="json"),
     "sglang_version", "neither SGLang's"),
    ("router module missing", lambda s, t: s.update(router_module="no_such_router_mod"),
     "router", "not importable"),
    ("router version differs", lambda s, t: s.update(router_module="yaml",
                                                      router_module_distribution="pyyaml",
                                                      router_module_version="0.0.1"),
     "router", "config says 0.0.1"),
    ("server flag value invalid",
     lambda s, t: s["servers"][0]["args"].__setitem__(5, "two"), "server_args", "refused"),
    ("server combination refused",
     lambda s, t: s["servers"][0]["args"].remove("--prefill-round-robin-balance"),
     "server_args", "Prefill round robin balance is required"),
    ("model path absent", lambda s, t: s.update(model_path=str(t / "nope")), "model",
     "not a directory"),
    ("config.json not JSON", lambda s, t: (Path(s["model_path"]) / "config.json").write_text("{"),
     "model", "not readable JSON"),
    ("architecture differs", lambda s, t: s.update(architecture="Qwen3MoeForCausalLM"),
     "model", "config says Qwen3MoeForCausalLM"),
    ("tokenizer absent", lambda s, t: s.update(tokenizer=str(t / "tok")), "model",
     "tokenizer"),
    ("too few GPUs", lambda s, t: s.update(gpus_per_node=4), "gpus", "lists 2 GPU(s)"),
    ("GPU lister fails", lambda s, t: s.update(gpu_list_command=["false"]), "gpus",
     "lists 0 GPU(s)"),
    ("GPU lister absent", lambda s, t: s.update(gpu_list_command=["no-such-nvidia-smi"]),
     "gpus", "did not run"),
    ("IB device absent", lambda s, t: s.update(ib_devices=["mlx5_9"], ib_sysfs=str(t)),
     "ib_devices", "mlx5_9"),
    ("secret not on the node", lambda s, t: s.update(secret_env=["PDBENCH_TEST_NO_SUCH"]),
     "secrets_on_node", "PDBENCH_TEST_NO_SUCH"),
]
CHECKS = {
    "shared_filesystem": lambda s: probe.check_shared_filesystem(s),
    "sglang_version": lambda s: probe.check_sglang_version(s),
    "router": lambda s: probe.check_module(s, "router_module"),
    "server_args": lambda s: probe.check_server_args(s, s["servers"][0]),
    "model": lambda s: probe.check_model(s),
    "gpus": lambda s: probe.check_gpus(s),
    "ib_devices": lambda s: probe.check_ib_devices(s),
    "ports": lambda s: probe.check_ports(s),
    "secrets_on_node": lambda s: probe.check_secrets_on_node(s),
}


@pytest.mark.parametrize("what, breaks, check, words", CASES, ids=[c[0] for c in CASES])
def test_each_check_fails_with_what_to_change(spec, tmp_path, monkeypatch, what, breaks,
                                              check, words):
    monkeypatch.setenv("PDBENCH_EMULATOR_SGLANG_VERSION", "0.5.5.post2")
    monkeypatch.delenv("PDBENCH_TEST_NO_SUCH", raising=False)
    assert probe.run(check, CHECKS[check], spec)["status"] == "ok" or check in (
        "ib_devices", "secrets_on_node")
    breaks(spec, tmp_path)
    result = probe.run(check, CHECKS[check], spec)
    assert result["status"] == "failed", result
    assert words in result["detail"], result
    assert "\n" not in result["detail"]


def test_a_port_in_use_fails_and_names_it(spec):
    held = _hold_port()
    try:
        port = held.getsockname()[1]
        spec["ports"] = [_free_port(), port]
        result = probe.run("ports", CHECKS["ports"], spec)
    finally:
        held.close()
    assert result["status"] == "failed" and str(port) in result["detail"], result


def test_skipped_checks_say_why(spec):
    spec["gpu_list_command"] = None
    assert probe.run("gpus", CHECKS["gpus"], spec)["status"] == "skipped"
    assert probe.run("ib", CHECKS["ib_devices"], spec)["status"] == "skipped"
    assert probe.run("sec", CHECKS["secrets_on_node"], spec)["status"] == "skipped"


def test_the_probe_runs_alone_with_the_standard_library(spec, tmp_path):
    """As in a container: the probe file alone, in an isolated interpreter; every check
    reports (the stand-in server without its version setting says its default release,
    which the config does not ask for)."""
    spec_path, out = tmp_path / "spec.json", tmp_path / "out.json"
    spec_path.write_text(json.dumps(spec))
    env = {"PATH": "/usr/bin:/bin"}
    subprocess.run([sys.executable, "-I", str(preflight.PROBE), str(spec_path), str(out)],
                   check=True, timeout=120, cwd=tmp_path, env=env)
    checks = {c["check"]: c for c in json.loads(out.read_text())["checks"]}
    assert checks["shared_filesystem"]["status"] == "ok"
    assert checks["model"]["status"] == "ok"
    assert checks["sglang_version"]["status"] == "failed"
    assert "the config says 0.5.5.post2" in checks["sglang_version"]["detail"]
    assert len(checks) == 10


@pytest.fixture
def client_site(tmp_path):
    """A directory with a module ``pdbench_fake_client`` of distribution fake-client 1.2,
    importable only with it on PYTHONPATH (the client's own environment)."""
    site = tmp_path / "client-site"
    (site / "fake_client_dist-1.2.dist-info").mkdir(parents=True)
    (site / "fake_client_dist-1.2.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: fake-client-dist\nVersion: 1.2\n")
    (site / "pdbench_fake_client.py").write_text("")
    return site


# (case, spec changes, status, words of the detail)
CLIENT_CASES = [
    ("site interpreter", {"client_module": "json"}, "ok", "json"),
    ("own interpreter and env", {}, "ok", "pdbench_fake_client (fake-client-dist 1.2)"),
    ("own interpreter without the env", {"client_env": {}}, "failed",
     "not importable with the client's"),
    ("release differs", {"client_module_version": "0.5.5.post2"}, "failed",
     "fake-client-dist here is 1.2, the config says 0.5.5.post2 (workload.python)"),
    ("interpreter absent", {"client_python": "/no/such/python"}, "failed",
     "the client's interpreter /no/such/python did not run"),
    ("interpreter is no python", {"client_python": "/bin/false"}, "failed",
     "the client's interpreter /bin/false exited 1"),
]


@pytest.mark.parametrize("case, changes, status, words", CLIENT_CASES,
                         ids=[c[0] for c in CLIENT_CASES])
def test_the_client_check_asks_the_clients_interpreter(spec, tmp_path, client_site, case,
                                                       changes, status, words):
    own = {"client_python": sys.executable, "client_env": {"PYTHONPATH": str(client_site)},
           "client_module": "pdbench_fake_client",
           "client_module_distribution": "fake-client-dist", "client_module_version": "1.2"}
    spec.update(own if case != "site interpreter" else {}, **changes)
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec))
    result = probe.run("client", probe.check_client, spec, str(spec_path))
    assert result["status"] == status, result
    assert words in result["detail"], result


def test_spec_asks_the_clients_own_interpreter(cfg, tmp_path):
    points = [p for p in grid_points(cfg) if p.experiment == "ep48"]
    spec, _ = preflight.probe_spec(cfg, points, tmp_path, "node01", "10.0.0.1", False, {})
    assert "client_python" not in spec  # site.python: the sglang_version check covers it
    raw = copy.deepcopy(cfg)
    raw["workload"].update(python="/opt/client/bin/python", env={"X": 1},
                           client_version="0.5.4")
    spec, _ = preflight.probe_spec(config.validate(raw), points, tmp_path, "node01",
                                   "10.0.0.1", False, {})
    assert spec["client_python"] == "/opt/client/bin/python"
    assert spec["client_env"] == {"PYTHONUNBUFFERED": "1", "X": "1"}
    assert (spec["client_module"], spec["client_module_distribution"],
            spec["client_module_version"]) == ("sglang.bench_serving", "sglang", "0.5.4")


def test_spec_holds_every_server_command_and_port_of_the_experiment(cfg, tmp_path):
    points = [p for p in grid_points(cfg) if p.experiment == "ep48"]
    spec, failed = preflight.probe_spec(cfg, points, tmp_path, "node01", "10.0.0.1", False,
                                        {"token": "t"})
    assert not failed
    names = [s["name"] for s in spec["servers"]]
    # decode: 12 nodes per point (its head, in --dist-init-addr, moves with the prefill
    # groups before it); prefill groups 1-3: 2 nodes each, once.
    assert sum("/decode/" in n for n in names) == 36
    assert sum("/prefill-" in n for n in names) == 6
    assert {n.split("/")[1] for n in names} == {"prefill-1", "prefill-2", "prefill-3",
                                                "decode"}
    assert all(s["args"][0] == "--model-path" for s in spec["servers"])
    # Nodes with their own addresses: the conventional ports.
    assert set(spec["ports"]) == {cfg["ports"][k] for k in ("http", "dist_init", "bootstrap",
                                                            "router")}
    shared, _ = preflight.probe_spec(cfg, points, tmp_path, "node01", "127.0.0.1", True, {})
    assert len(shared["ports"]) > 20 and min(shared["ports"]) >= cfg["ports"]["shared_host_base"]
    assert spec["architecture"] == "DeepseekV3ForCausalLM"
    # The router generation's module and package; the probe compares the version.
    assert (spec["router_module"], spec["router_module_distribution"]) == (
        "sglang_router.launch_router", "sglang-router")
    assert spec["router_module_version"]


def test_ib_devices_come_from_the_server_args_and_the_site(cfg):
    cfg = copy.deepcopy(cfg)
    cfg["server_args"]["decode"]["disaggregation-ib-device"] = "mlx5_0,mlx5_1:1"
    cfg["site"]["preflight"]["ib_devices"] = ["mlx5_4"]
    assert preflight.ib_devices(cfg) == ["mlx5_0", "mlx5_1", "mlx5_4"]


def test_test_only_is_the_holder_request_submitted_nowhere(cfg):
    point = max(grid_points(cfg), key=lambda p: p.total_nodes)
    argv = preflight.test_only_argv(cfg, point, "/tmp/x.log")
    assert argv[:2] == ["sbatch", "--test-only"] and "--parsable" not in argv
    assert argv[argv.index("--nodes") + 1] == str(point.total_nodes)


def test_secrets_are_named_never_shown(cfg, monkeypatch):
    cfg = copy.deepcopy(cfg)
    cfg["site"]["secret_env"] = ["PDBENCH_TEST_SET", "PDBENCH_TEST_UNSET"]
    monkeypatch.setenv("PDBENCH_TEST_SET", "s3cr3t-value")
    monkeypatch.delenv("PDBENCH_TEST_UNSET", raising=False)
    result = preflight.check_secrets(cfg)
    assert result["status"] == "failed" and "PDBENCH_TEST_UNSET" in result["detail"]
    assert "s3cr3t" not in json.dumps(result) and "PDBENCH_TEST_SET," not in result["detail"]


@pytest.mark.parametrize("key, value, reruns", [
    (("server_args", "decode", "max-running-requests"), 1, True),
    (("sglang", "version"), "0.5.8", True),
    (("site", "container", "image"), "other.sqsh", True),
    (("model", "path"), "/elsewhere", True),
    (("profile", "snapshots"), 7, False),
    (("report", "references"), [], False),
])
def test_the_fingerprint_follows_what_a_launch_depends_on(cfg, key, value, reruns):
    before = preflight.fingerprint(cfg, "ep48")
    changed = copy.deepcopy(cfg)
    node = changed
    for part in key[:-1]:
        node = node[part]
    node[key[-1]] = value
    assert (preflight.fingerprint(changed, "ep48") != before) is reruns
    assert preflight.fingerprint(cfg, "ep96") != before
