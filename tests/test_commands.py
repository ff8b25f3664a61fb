"""Rendered commands (pdbench.commands): flags per SGLang release, scripts, quoting, secrets."""

from __future__ import annotations

import copy
import json
import os
import shlex
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from pdbench import config as config_mod
from pdbench import topology
from pdbench.commands import (
    CLIENT_GATE_ARMED,
    CLIENT_GATE_RELEASED,
    ControlRequest,
    client_argv,
    client_env,
    control_request,
    curl_argv,
    gated_client_argv,
    missing_secrets,
    node_launcher_script,
    render_shell,
    router_argv,
    server_argvs,
    server_env,
    srun_argv,
    static_expert_location,
)
from pdbench.dialects import dialect_for, dialect_for_version
from pdbench.errors import ConfigError
from pdbench.layout import ResultsPaths

REPO = Path(__file__).resolve().parents[1]
NODES = topology.expand_nodelist("gb-[001-018]")


def raw_default() -> dict:
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def make(raw: dict | None = None, **sections):
    raw = copy.deepcopy(raw or raw_default())
    for dotted, value in sections.items():
        *parents, last = dotted.split("__")
        node = raw
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return config_mod.validate(raw)


def point_of(cfg, groups=3, eplb="none"):
    for p in config_mod.grid_points(cfg):
        if p.prefill_groups == groups and p.eplb == eplb:
            return p
    raise AssertionError(f"no point p{groups} eplb={eplb}")


def plan_of(cfg, point, nodes=NODES, addresses=None):
    return topology.plan(point, nodes, cfg["ports"], addresses)


@pytest.fixture
def cfg():
    return make()


@pytest.fixture
def p3(cfg):
    return point_of(cfg)


@pytest.fixture
def plan(cfg, p3):
    return plan_of(cfg, p3)


# --------------------------------------------------------------------------------------
# Server argvs


GB200_DECODE_RANK5_0_5_5_POST2 = (
    "python3 -m sglang.launch_server --model-path models/nvidia/DeepSeek-R1-0528-FP4 "
    "--served-model-name nvidia/DeepSeek-R1-0528-FP4 --disaggregation-mode decode "
    "--host 0.0.0.0 --port 30000 --dist-init-addr gb-007:5757 --nnodes 12 --node-rank 5 "
    "--tp-size 48 --dp-size 48 --enable-dp-attention --ep-size 48 "
    "--decode-log-interval 1 --context-length 2176 --disable-radix-cache "
    "--disable-shared-experts-fusion --watchdog-timeout 1000000 "
    "--disable-chunked-prefix-cache --attention-backend trtllm_mla --kv-cache-dtype fp8_e4m3 "
    "--enable-single-batch-overlap --moe-dense-tp-size 1 --enable-dp-lm-head "
    "--eplb-algorithm deepseek --quantization modelopt_fp4 "
    "--max-running-requests 49152 --chunked-prefill-size 786432 --mem-fraction-static 0.83 "
    "--moe-a2a-backend deepep --deepep-mode low_latency --ep-dispatch-algorithm static "
    "--cuda-graph-bs 1024 --num-reserved-decode-tokens 112 --ep-num-redundant-experts 32 "
    "--prefill-round-robin-balance --max-total-tokens 3122380 "
    "--moe-runner-backend flashinfer_cutedsl"
).split()


def flag_value(argv, flag):
    i = argv.index(flag)
    return argv[i + 1]


def test_decode_rank5_gb200_recipe_0_5_5_post2(cfg, p3, plan):
    argvs = server_argvs(cfg, p3, plan, "decode")
    assert len(argvs) == 12
    assert argvs[5] == GB200_DECODE_RANK5_0_5_5_POST2
    assert [flag_value(a, "--node-rank") for a in argvs] == [str(r) for r in range(12)]
    assert "--disaggregation-bootstrap-port" not in argvs[0]


def config_0_5_23():
    """The default recipe on 0.5.23, which has no --prefill-round-robin-balance."""
    raw = raw_default()
    raw["sglang"]["version"] = "0.5.23"
    del raw["server_args"]["decode"]["prefill-round-robin-balance"]
    return make(raw)


def test_default_recipe_on_0_5_23_names_removed_option(p3):
    # Config validation already spells every server arg for the release.
    with pytest.raises(ConfigError, match=r"server_args\.decode\.prefill-round-robin-balance: "
                       r"SGLang 0\.5\.23 has no --prefill-round-robin-balance: removed in 0\.5\.20"):
        make(sglang__version="0.5.23")


def test_decode_0_5_23_spelling(p3):
    cfg = config_0_5_23()
    argv = server_argvs(cfg, p3, plan_of(cfg, p3), "decode")[5]
    assert argv[
        argv.index("--cuda-graph-bs-decode") : argv.index("--cuda-graph-bs-decode") + 2
    ] == [
        "--cuda-graph-bs-decode",
        "1024",
    ]
    assert "--cuda-graph-bs" not in argv
    assert flag_value(argv, "--attn-dp-size") == "48"
    assert "--dp-size" not in argv and "--enable-dp-attention" not in argv
    assert flag_value(argv, "--moe-a2a-backend") == "deepep"
    assert flag_value(argv, "--tp-size") == "48" and flag_value(argv, "--ep-size") == "48"


def test_decode_0_4_9_spelling(p3):
    raw = raw_default()
    raw["sglang"]["version"] = "v0.4.9"
    del raw["server_args"]["decode"]["prefill-round-robin-balance"]  # 0.5.2-0.5.7 only
    cfg = make(raw)
    argv = server_argvs(cfg, p3, plan_of(cfg, p3), "decode")[5]
    assert "--enable-deepep-moe" in argv
    assert "--moe-a2a-backend" not in argv
    assert flag_value(argv, "--cuda-graph-bs") == "1024"
    i = argv.index("--dp-size")
    assert argv[i : i + 3] == ["--dp-size", "48", "--enable-dp-attention"]


def test_prefill_group_argvs(cfg, p3, plan):
    argvs = server_argvs(cfg, p3, plan, "prefill-2")
    assert len(argvs) == 2
    for rank, argv in enumerate(argvs):
        assert flag_value(argv, "--disaggregation-mode") == "prefill"
        assert flag_value(argv, "--disaggregation-bootstrap-port") == "8991"
        assert flag_value(argv, "--dist-init-addr") == "gb-003:5757"
        assert flag_value(argv, "--nnodes") == "2"
        assert flag_value(argv, "--node-rank") == str(rank)
        assert flag_value(argv, "--tp-size") == "8"
        assert flag_value(argv, "--max-running-requests") == "11264"
        assert "--disable-cuda-graph" in argv
        assert "--cuda-graph-bs" not in argv


def test_shared_host_ports_per_node(cfg):
    point = point_of(cfg, groups=1)
    nodes = [f"n{i}" for i in range(16)]
    plan = plan_of(cfg, point, nodes, {n: "127.0.0.1" for n in nodes})
    argvs = server_argvs(cfg, point, plan, "decode")
    ports = [flag_value(a, "--port") for a in argvs]
    assert ports == [str(n.http_port) for n in plan.decode.nodes]
    assert len(set(ports)) == len(ports)
    prefill = server_argvs(cfg, point, plan, "prefill-1")[0]
    assert flag_value(prefill, "--disaggregation-bootstrap-port") == str(
        plan.prefill[0].bootstrap_port
    )


def test_server_option_order_is_derived_then_config(cfg, p3, plan):
    argv = server_argvs(cfg, p3, plan, "decode")[0]
    flags = [a for a in argv if a.startswith("--")]
    assert flags.index("--ep-size") < flags.index("--decode-log-interval")
    config_order = [f"--{k}" for k in config_mod.decode_server_args(cfg)]
    config_order[config_order.index("--cuda-graph-bs-decode")] = "--cuda-graph-bs"
    assert [f for f in flags if f in config_order] == config_order


def test_unknown_server_name(cfg, p3, plan):
    with pytest.raises(ValueError, match="prefill-4"):
        server_argvs(cfg, p3, plan, "prefill-4")


def test_per_phase_option_too_new_names_key():
    raw = raw_default()
    raw["server_args"]["prefill"]["cuda-graph-bs-prefill"] = [8]
    with pytest.raises(ConfigError, match=r"server_args\.prefill\.cuda-graph-bs-prefill"):
        make(raw)


# --------------------------------------------------------------------------------------
# EPLB


def eplb_cfg(mode, **kw):
    # The recorded distribution lives on a shared filesystem mounted into the container.
    return make(grid__eplb=[mode], site__container__mounts=["/shared:/shared"], **kw)


def test_eplb_none(cfg, p3, plan):
    argv = server_argvs(cfg, p3, plan, "decode")[0]
    for flag in ("--enable-eplb", "--init-expert-location", "--expert-distribution-recorder-mode"):
        assert flag not in argv


def test_eplb_online_overrides_algorithm_once():
    cfg = eplb_cfg(
        "online",
        eplb__online={"algorithm": "deepseek_hierarchical", "rebalance_num_iterations": 500},
    )
    point = point_of(cfg, eplb="online")
    plan = plan_of(cfg, point)
    decode = server_argvs(cfg, point, plan, "decode")[0]
    assert decode[-5:] == [
        "--enable-eplb",
        "--eplb-algorithm",
        "deepseek_hierarchical",
        "--eplb-rebalance-num-iterations",
        "500",
    ]
    assert decode.count("--eplb-algorithm") == 1
    prefill = server_argvs(cfg, point, plan, "prefill-1")[0]
    assert "--enable-eplb" not in prefill
    assert flag_value(prefill, "--eplb-algorithm") == "deepseek"


def test_eplb_online_knobs_and_redundant_experts():
    cfg = eplb_cfg("online", eplb__online={"rebalance_layers_per_chunk": 4,
                                           "min_rebalancing_utilization_threshold": 0.85},
                   eplb__redundant_experts=32)
    point = point_of(cfg, eplb="online")
    decode = server_argvs(cfg, point, plan_of(cfg, point), "decode")[0]
    assert flag_value(decode, "--eplb-rebalance-layers-per-chunk") == "4"
    assert flag_value(decode, "--eplb-min-rebalancing-utilization-threshold") == "0.85"
    assert flag_value(decode, "--ep-num-redundant-experts") == "32"


def test_eplb_static_uses_location():
    cfg = eplb_cfg("static", eplb__static={"init_expert_location": "/shared/eplb/decode.pt"})
    point = point_of(cfg, eplb="static")
    plan = plan_of(cfg, point)
    decode = server_argvs(cfg, point, plan, "decode")
    assert all(a[-2:] == ["--init-expert-location", "/shared/eplb/decode.pt"] for a in decode)
    override = server_argvs(cfg, point, plan, "decode", expert_location=Path("/x/rec.pt"))[0]
    assert override[-2:] == ["--init-expert-location", "/x/rec.pt"]
    assert "--init-expert-location" not in server_argvs(cfg, point, plan, "prefill-1")[0]


def test_eplb_static_without_a_file_needs_the_recorded_one():
    cfg = eplb_cfg("static", eplb__static__init_expert_location="/shared/eplb/dist.pt")
    cfg["eplb"]["static"]["init_expert_location"] = None
    point = point_of(cfg, eplb="static")
    with pytest.raises(ConfigError, match="eplb.static.init_expert_location"):
        server_argvs(cfg, point, plan_of(cfg, point), "decode")
    results = ResultsPaths(Path("/work/results"))
    location = static_expert_location(cfg, results, point)
    assert location == Path("/work/results", point.experiment, "eplb", "expert_distribution.pt")
    decode = server_argvs(cfg, point, plan_of(cfg, point), "decode", expert_location=location)[0]
    assert decode[-2:] == ["--init-expert-location", str(location)]
    cfg["eplb"]["static"]["init_expert_location"] = "/shared/given.pt"
    assert static_expert_location(cfg, results, point) == Path("/shared/given.pt")
    assert static_expert_location(cfg, results, replace(point, eplb="none")) is None


@pytest.mark.parametrize("prefill", [False, True])
def test_static_prefill_starts_from_the_location_only_when_configured(prefill):
    cfg = eplb_cfg("static", eplb__static={"init_expert_location": "/shared/eplb/d.pt",
                                           "prefill": prefill},
                   eplb__redundant_experts=32)
    point = point_of(cfg, eplb="static")
    prefill_argv = server_argvs(cfg, point, plan_of(cfg, point), "prefill-1")[0]
    assert ("--init-expert-location" in prefill_argv) is prefill
    if prefill:
        assert flag_value(prefill_argv, "--init-expert-location") == "/shared/eplb/d.pt"
    assert ("--ep-num-redundant-experts" in prefill_argv) is prefill
    decode = server_argvs(cfg, point, plan_of(cfg, point), "decode")[0]
    assert decode[-4:] == ["--init-expert-location", "/shared/eplb/d.pt",
                           "--ep-num-redundant-experts", "32"]


@pytest.mark.parametrize("records, expected", [
    (True, ["--expert-distribution-recorder-mode", "stat",
            "--expert-distribution-recorder-buffer-size", "-1"]),
    (False, []),
])
def test_the_recording_point_starts_decode_with_the_stat_recorder(cfg, p3, plan, records,
                                                                  expected):
    point = replace(p3, records_experts=records)
    decode = server_argvs(cfg, point, plan, "decode")[0]
    plain = server_argvs(cfg, p3, plan, "decode")[0]
    assert decode == plain + expected
    assert server_argvs(cfg, point, plan, "prefill-1") == server_argvs(cfg, p3, plan,
                                                                       "prefill-1")


# --------------------------------------------------------------------------------------
# Router, client, srun


def test_router_argv_three_groups(cfg, plan):
    assert router_argv(cfg, plan) == [
        "python3", "-m", "sglang_router.launch_router", "--pd-disaggregation",
        "--prefill", "http://gb-001:30000", "8991",
        "--prefill", "http://gb-003:30000", "8991",
        "--prefill", "http://gb-005:30000", "8991",
        "--decode", "http://gb-007:30000",
        "--host", "0.0.0.0", "--port", "7000",
    ]  # fmt: skip
    cfg2 = make(
        router={"mini_lb": True, "policy": "round_robin", "extra_args": ["--log-level", "debug"]}
    )
    argv = router_argv(cfg2, plan)
    assert argv[-5:] == ["--mini-lb", "--policy", "round_robin", "--log-level", "debug"]


def test_client_bench_serving(cfg, p3, plan):
    argv = client_argv(cfg, p3, plan, output_file=Path("/r/ep48/p3/bench/bench.jsonl"))
    assert argv == [
        "python3", "-m", "sglang.bench_serving", "--backend", "sglang",
        "--base-url", "http://gb-001:7000", "--dataset-name", "random-ids",
        "--random-input-len", "1000", "--random-output-len", "1000",
        "--random-range-ratio", "1.0", "--num-prompts", "98304", "--request-rate", "inf",
        "--max-concurrency", "60000", "--tokenize-prompt", "--warmup-requests", "0",
        "--tokenizer", "models/nvidia/DeepSeek-R1-0528-FP4", "--output-file", "/r/ep48/p3/bench/bench.jsonl",
    ]  # fmt: skip
    raw = raw_default()
    del raw["server_args"]["decode"]["prefill-round-robin-balance"]
    cfg2 = make(
        raw,
        sglang__version="0.5.23",
        workload={
            "num_prompts": 100000,
            "request_rate": 8,
            "max_concurrency": 50000,
            "dataset_path": "/d/sg.json",
            "extra_args": ["--seed", "1"],
        },
        site__container__mounts=["/d"],
    )
    argv2 = client_argv(cfg2, p3, plan, output_file="o.jsonl", tokenizer="/tok")
    assert argv2[2] == "sglang.benchmark.serving"
    assert flag_value(argv2, "--num-prompts") == "100000"
    assert flag_value(argv2, "--request-rate") == "8"
    assert flag_value(argv2, "--max-concurrency") == "50000"
    assert flag_value(argv2, "--tokenizer") == "/tok"
    assert argv2[-4:] == ["--dataset-path", "/d/sg.json", "--seed", "1"]


def test_client_bench_one_batch_server(p3, plan):
    # 0.5.5.post2's client reads /get_server_info through the router: smg answers with the
    # first prefill server's; its --dataset-name knows mmmu and random only.
    cfg = make(
        router={"implementation": "smg"},
        workload={
            "client": "bench_one_batch_server",
            "dataset": "random",
            "input_len": 1000,
            "output_len": 1000,
            "batch_size": 135168,
        },
    )
    argv = client_argv(cfg, p3, plan, output_file="/r/b.jsonl")
    assert argv == [
        "python3", "-m", "sglang.bench_one_batch_server",
        "--model-path", "models/nvidia/DeepSeek-R1-0528-FP4", "--base-url", "http://gb-001:7000",
        "--batch-size", "135168", "--input-len", "1000", "--output-len", "1000",
        "--skip-warmup", "--result-filename", "/r/b.jsonl", "--dataset-name", "random",
    ]  # fmt: skip
    cfg2 = make(router={"implementation": "smg"},
                workload={"client": "bench_one_batch_server", "dataset": "random"})
    assert flag_value(client_argv(cfg2, p3, plan, output_file="x"), "--batch-size") == "98304"


def test_srun_argv_pyxis(plan):
    cfg = make(
        site__container={
            "runtime": "pyxis",
            "image": "/i/sglang.sqsh",
            "mounts": ["/lustre:/lustre", "/scratch"],
            "workdir": "/lustre/w",
            "extra_args": ["--container-writable"],
        }
    )
    argv = srun_argv(
        cfg,
        job_id=42,
        nodes=plan.decode.node_names,
        script_path="/lustre/s.sh",
        step_name="pdbench-decode",
    )
    assert argv == [
        "srun", "--jobid", "42", "--overlap", "--nodes", "12", "--ntasks", "12",
        "--ntasks-per-node", "1", "--nodelist", ",".join(plan.decode.node_names),
        "--job-name", "pdbench-decode", "--kill-on-bad-exit=1", "--export=ALL",
        "--container-image", "/i/sglang.sqsh",
        "--container-mounts", f"{os.getcwd()}:{os.getcwd()},/lustre:/lustre,/scratch",
        "--container-workdir", "/lustre/w", "--no-container-mount-home", "--container-writable",
        "bash", "/lustre/s.sh",
    ]  # fmt: skip


def test_srun_argv_apptainer_and_none(plan):
    cfg = make(
        site__container={
            "runtime": "apptainer",
            "image": "/i/sglang.sif",
            "mounts": ["/a:/b", "/c"],
            "workdir": "/b",
        }
    )
    argv = srun_argv(cfg, job_id=7, nodes=["n1", "n2"], script_path="/b/s.sh", step_name="x")
    assert argv[argv.index("--export=ALL") + 1 :] == [
        "apptainer", "exec", "--nv", "--bind", f"{os.getcwd()}:{os.getcwd()}",
        "--bind", "/a:/b", "--bind", "/c", "--pwd", "/b",
        "/i/sglang.sif", "bash", "/b/s.sh",
    ]  # fmt: skip
    cfg = make(site__container={"runtime": "none"})
    argv = srun_argv(cfg, job_id=7, nodes=["n1"], script_path="/b/s.sh", step_name="x")
    assert argv[-3:] == ["--export=ALL", "bash", "/b/s.sh"]
    # Refused when the config is validated, before any launch.
    with pytest.raises(ConfigError, match="site.container.extra_args"):
        make(site__container={"runtime": "none", "extra_args": ["--x"]})


# --------------------------------------------------------------------------------------
# Environment and secrets


def test_client_of_another_release_with_its_own_interpreter(p3, plan):
    """Servers of 0.5.23, the client 0.5.5.post2's from an interpreter of its own: the
    client's module, flags and datasets are its release's, its environment is site.env
    then workload.env, never the servers' env sections."""
    raw = raw_default()
    del raw["server_args"]["decode"]["prefill-round-robin-balance"]
    cfg = make(
        raw,
        sglang__version="0.5.23",
        router={"implementation": "smg"},
        site__env={"A": "site", "B": "site"},
        env__common={"C": "servers"},
        workload={"client": "bench_one_batch_server", "dataset": "random",
                  "client_version": "0.5.5.post2", "python": "/opt/sglang-0.5.5/bin/python",
                  "env": {"B": "client", "D": True}, "batch_size": 98304},
    )
    argv = client_argv(cfg, p3, plan, output_file="/r/b.jsonl")
    assert argv[:3] == ["/opt/sglang-0.5.5/bin/python", "-m", "sglang.bench_one_batch_server"]
    assert argv[-2:] == ["--dataset-name", "random"]
    assert client_env(cfg) == {"A": "site", "B": "client", "D": "true"}
    # Unset, both follow the servers: site.python and sglang.version.
    default = make(raw, sglang__version="0.5.23")
    argv = client_argv(default, p3, plan, output_file="o.jsonl")
    assert argv[:3] == ["python3", "-m", "sglang.benchmark.serving"]
    assert client_env(default) == {"PYTHONUNBUFFERED": "1"}  # config.yaml's site.env


def test_client_env_refuses_a_secret_value():
    cfg = make(site__secret_env=["HF_TOKEN"])
    cfg["workload"]["env"] = {"HF_TOKEN": "x"}  # past validation, which refuses it by name
    with pytest.raises(ConfigError, match=r"workload\.env\.HF_TOKEN.*secret_env"):
        client_env(cfg)
    with pytest.raises(ConfigError, match=r"workload\.env\.HF_TOKEN: looks like a credential"):
        make(workload__env={"HF_TOKEN": "x"}, site__secret_env=["HF_TOKEN"])


def test_server_env(cfg):
    cfg = make(
        site__env={"A": "site", "B": True},
        env__common={"A": "common", "C": 1.5},
        env__decode={"A": "decode"},
    )
    env = server_env(cfg, "decode", shared_dir="/shared/ep48/p3")
    assert env["A"] == "decode" and env["B"] == "true" and env["C"] == "1.5"
    assert env["SGLANG_TORCH_PROFILER_DIR"] == "/shared/ep48/p3/profile"
    assert env["SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR"] == "/shared/ep48/p3/expert_distribution"
    assert server_env(cfg, "prefill")["A"] == "common"
    assert all(isinstance(v, str) for v in env.values())


def test_secret_in_env_config_is_error():
    with pytest.raises(ConfigError, match=r"env\.decode\.HF_TOKEN.*secret_env"):
        make(env__decode={"HF_TOKEN": "x"}, site__secret_env=["HF_TOKEN"])


def test_missing_secrets(cfg):
    assert cfg["site"]["secret_env"] == []  # the default needs no secret
    assert missing_secrets(cfg, {}) == []
    cfg = make(site__secret_env=["HF_TOKEN"])
    assert missing_secrets(cfg, {}) == ["HF_TOKEN"]
    assert missing_secrets(cfg, {"HF_TOKEN": ""}) == ["HF_TOKEN"]
    assert missing_secrets(cfg, {"HF_TOKEN": "t"}) == []


# --------------------------------------------------------------------------------------
# Control calls


def test_control_requests(cfg, plan):
    url = plan.decode.url
    assert control_request("slow_down", url, forward_sleep_time=180) == ControlRequest(
        "POST", "http://gb-007:30000/slow_down", {"forward_sleep_time": 180}
    )
    assert control_request("slow_down", url + "/", forward_sleep_time=None).body == {
        "forward_sleep_time": None
    }
    # the reset between points on shared servers
    assert control_request("flush_cache", url) == ControlRequest(
        "POST", "http://gb-007:30000/flush_cache", None)
    with pytest.raises(ValueError, match="unknown control call 'update_weights'"):
        control_request("update_weights", url)  # no stage sends it
    with pytest.raises(ValueError):
        control_request("slow_down", url)
    with pytest.raises(ValueError):
        control_request("reboot", url)
    old = dialect_for(cfg)
    assert control_request("server_info", url, dialect=old).url == f"{url}/get_server_info"
    assert control_request("server_info", url, dialect=dialect_for_version("0.5.23")).url == (
        f"{url}/server_info"
    )


def test_start_profile_per_release(cfg, plan):
    kw = dict(
        output_dir=Path("/shared/ep48/p3/profile/1"),
        num_steps=5,
        activities=("CPU", "GPU"),
        with_stack=True,
        record_shapes=False,
        profile_id="s1",
    )
    old = control_request("start_profile", plan.decode.url, dialect=dialect_for(cfg), **kw)
    assert old.body == {
        "output_dir": "/shared/ep48/p3/profile/1",
        "num_steps": 6,
        "activities": ["CPU", "GPU"],
        "with_stack": True,
        "record_shapes": False,
    }
    new = control_request(
        "start_profile", plan.decode.url, dialect=dialect_for_version("0.5.23"), **kw
    )
    assert new.body["num_steps"] == 5 and new.body["profile_id"] == "s1"
    oldest = control_request(
        "start_profile", plan.decode.url, dialect=dialect_for_version("0.4.6.post3"), **kw
    )
    assert set(oldest.body) == {"output_dir", "num_steps", "activities"}
    with_start = control_request(
        "start_profile", plan.decode.url, dialect=dialect_for(cfg), start_step=100, num_steps=5
    )
    assert with_start.body == {"start_step": 100, "num_steps": 5}
    with pytest.raises(ValueError, match="dialect"):
        control_request("start_profile", plan.decode.url, num_steps=5)


def test_curl_argv(plan):
    req = control_request("slow_down", plan.decode.url, forward_sleep_time=None)
    assert curl_argv(req) == [
        "curl", "--silent", "--show-error", "--fail", "--max-time", "60", "-X", "POST",
        "http://gb-007:30000/slow_down", "-H", "Content-Type: application/json",
        "--data", '{"forward_sleep_time": null}',
    ]  # fmt: skip
    info = control_request("server_info", plan.decode.url, dialect=dialect_for_version("0.5.23"))
    assert curl_argv(info, timeout_s=5)[-5:] == [
        "--max-time", "5", "-X", "GET", "http://gb-007:30000/server_info",
    ]  # fmt: skip


# --------------------------------------------------------------------------------------
# Quoting: hostile values arrive byte-for-byte and nothing runs


STUB = """#!{python}
import json, os, sys
out = os.environ["PDBENCH_STUB_OUT"]
with open(out, "w") as f:
    json.dump({{"argv": sys.argv[1:], "env": dict(os.environ)}}, f)
"""


def hostile(tmp_path: Path) -> str:
    return (
        f"a b 'single' \"double\" ; echo hi; $(touch {tmp_path}/pwned1) "
        f"`touch {tmp_path}/pwned2` $HOME ${{PATH}} \\ \\n * ? ~ # & | > < %s {{}}"
    )


@pytest.fixture
def stub(tmp_path):
    bindir = tmp_path / "bin dir $(touch pwned0)"
    bindir.mkdir()
    python = bindir / "python"
    python.write_text(STUB.format(python=sys.executable))
    python.chmod(0o755)
    return python


def evil_config(tmp_path, stub):
    evil = hostile(tmp_path)
    raw = raw_default()
    raw["site"]["python"] = str(stub)
    raw["site"]["container"] = {
        "runtime": "apptainer",
        "image": f"/img/{evil}.sif",
        "mounts": [f"/src {evil}:/dst", "/models"],
    }
    raw["site"]["env"] = {"EVIL_ENV": evil}
    raw["model"]["path"] = f"/models/{evil}"
    raw["server_args"]["decode"]["attention-backend"] = evil
    raw["router"] = {"extra_args": [evil, "--x"]}
    return make(raw), evil


def run_bash(script_or_cmd, env, *, cwd, as_file=None, path=None):
    full_env = {"PATH": path or os.environ["PATH"], **env}
    if as_file is not None:
        as_file.write_text(script_or_cmd)
        cmd = ["bash", str(as_file)]
    else:
        cmd = ["bash", "-c", script_or_cmd]
    return subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=30, cwd=cwd)


def assert_nothing_ran(tmp_path):
    # Each hostile value holds `touch <tmp_path>/pwnedN` (and the stub's directory name
    # `touch pwned0`, relative to the working directory tmp_path): executed, it leaves
    # that file.
    leftovers = [n for n in ("pwned0", "pwned1", "pwned2") if (tmp_path / n).exists()]
    assert leftovers == [], f"shell code in a value was executed: {leftovers}"


def test_launcher_script_passes_hostile_values_verbatim(tmp_path, stub):
    cfg, evil = evil_config(tmp_path, stub)
    point = point_of(cfg)
    plan = plan_of(cfg, point)
    argvs = server_argvs(cfg, point, plan, "decode")
    env = server_env(cfg, "decode", shared_dir=tmp_path / f"shared {evil}")
    script = node_launcher_script(
        argvs, env, role_name="decode", node_names=plan.decode.node_names, required_env=["HF_TOKEN"]
    )
    out = tmp_path / "stub.json"
    for rank in (0, 5, 11):
        result = run_bash(
            script,
            {
                "SLURM_NODEID": str(rank),
                "PDBENCH_STUB_OUT": str(out),
                "SLURMD_NODENAME": plan.decode.node_names[rank],
                "HF_TOKEN": "supersecret",
            },
            cwd=tmp_path,
            as_file=tmp_path / "launch.sh",
        )
        assert result.returncode == 0, result.stderr
        got = json.loads(out.read_text())
        assert got["argv"] == argvs[rank][1:]
        assert flag_value(got["argv"], "--model-path") == f"/models/{evil}"
        assert flag_value(got["argv"], "--attention-backend") == evil
        assert got["env"]["EVIL_ENV"] == evil
        assert got["env"]["SGLANG_TORCH_PROFILER_DIR"] == str(
            tmp_path / f"shared {evil}" / "profile"
        )
        # The secret reaches the server by name, through the environment.
        assert got["env"]["HF_TOKEN"] == "supersecret"
    assert_nothing_ran(tmp_path)


def test_launcher_script_with_log_dir(tmp_path, stub):
    cfg, evil = evil_config(tmp_path, stub)
    point = point_of(cfg, groups=1)
    plan = plan_of(cfg, point)
    argvs = server_argvs(cfg, point, plan, "prefill-1")
    log_dir = tmp_path / f"logs {evil}"
    script = node_launcher_script(argvs, {}, role_name="prefill-1", log_dir=log_dir)
    out = tmp_path / "stub.json"
    result = run_bash(script, {"SLURM_NODEID": "1", "PDBENCH_STUB_OUT": str(out)}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(out.read_text())["argv"] == argvs[1][1:]
    assert (log_dir / "prefill-1_node_rank_1.log").exists()
    assert_nothing_ran(tmp_path)


def test_launcher_script_errors(tmp_path, stub):
    cfg, _ = evil_config(tmp_path, stub)
    point = point_of(cfg, groups=1)
    plan = plan_of(cfg, point)
    argvs = server_argvs(cfg, point, plan, "prefill-1")
    script = node_launcher_script(
        argvs,
        {},
        role_name="prefill-1",
        node_names=plan.prefill[0].node_names,
        required_env=["HF_TOKEN"],
    )
    base = {"PDBENCH_STUB_OUT": str(tmp_path / "o.json"), "HF_TOKEN": "t"}
    r = run_bash(script, {**base, "SLURM_NODEID": "7"}, cwd=tmp_path)
    assert r.returncode == 2 and "no command for SLURM_NODEID=7" in r.stderr
    r = run_bash(
        script,
        {k: v for k, v in base.items() if k != "HF_TOKEN"} | {"SLURM_NODEID": "0"},
        cwd=tmp_path,
    )
    assert r.returncode == 3 and "HF_TOKEN is not set" in r.stderr
    r = run_bash(script, {**base, "SLURM_NODEID": "0", "SLURMD_NODENAME": "gb-999"}, cwd=tmp_path)
    assert r.returncode == 4 and "planned on gb-001 but runs on gb-999" in r.stderr
    r = run_bash(script, base, cwd=tmp_path)
    assert r.returncode == 2 and "<unset>" in r.stderr
    assert not (tmp_path / "o.json").exists()
    assert_nothing_ran(tmp_path)


def test_rendered_command_lines_round_trip(tmp_path, stub):
    cfg, evil = evil_config(tmp_path, stub)
    point = point_of(cfg)
    plan = plan_of(cfg, point)
    out = tmp_path / "stub.json"
    # The router: its python is the stub, an extra argument is hostile.
    router = router_argv(cfg, plan)
    r = run_bash(render_shell(router), {"PDBENCH_STUB_OUT": str(out)}, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(out.read_text())["argv"] == router[1:]
    assert evil in router
    # srun with a hostile image and mount: a stub srun receives it exactly.
    srun_stub = tmp_path / "srun"
    srun_stub.write_text(STUB.format(python=sys.executable))
    srun_stub.chmod(0o755)
    argv = srun_argv(
        cfg,
        job_id=1,
        nodes=plan.decode.node_names,
        script_path=tmp_path / "s.sh",
        step_name=f"step {evil}",
    )
    r = run_bash(
        render_shell(argv),
        {"PDBENCH_STUB_OUT": str(out)},
        cwd=tmp_path,
        path=f"{tmp_path}:{os.environ['PATH']}",
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(out.read_text())["argv"] == argv[1:]
    i = argv.index(f"/src {evil}:/dst")
    assert argv[i - 1] == "--bind"
    assert shlex.split(render_shell(argv)) == argv
    assert_nothing_ran(tmp_path)


# --------------------------------------------------------------------------------------
# Secrets never appear in rendered text


def test_secret_value_never_rendered(tmp_path, monkeypatch, p3):
    monkeypatch.setenv("HF_TOKEN", "supersecret")
    cfg = make(site__container={"runtime": "pyxis", "image": "img", "mounts": ["/l:/l"]},
               site__secret_env=["HF_TOKEN"])
    plan = plan_of(cfg, p3)
    d = dialect_for(cfg)
    texts = []
    for name in [s.name for s in plan.servers]:
        role = plan.server(name).role
        argvs = server_argvs(cfg, p3, plan, name)
        env = server_env(cfg, role, shared_dir="/l/r")
        texts.append(
            node_launcher_script(
                argvs,
                env,
                role_name=name,
                log_dir="/l/logs",
                node_names=plan.server(name).node_names,
                required_env=cfg["site"]["secret_env"],
            )
        )
        texts += [render_shell(a) for a in argvs]
        texts.append(json.dumps(env))
        texts.append(
            render_shell(
                srun_argv(
                    cfg,
                    job_id=1,
                    nodes=plan.server(name).node_names,
                    script_path="/l/s.sh",
                    step_name=name,
                )
            )
        )
    texts.append(render_shell(router_argv(cfg, plan)))
    texts.append(render_shell(client_argv(cfg, p3, plan, output_file="/l/b.jsonl")))
    for kind, kw in (
        ("slow_down", {"forward_sleep_time": 1}),
        ("start_profile", {"num_steps": 5}),
    ):
        req = control_request(
            kind, plan.decode.url, **({"dialect": d} if kind == "start_profile" else {}), **kw
        )
        texts += [json.dumps(req), render_shell(curl_argv(req))]
    texts.append(plan.to_json())
    texts.append(plan.to_env_sh())
    joined = "\n".join(texts)
    assert "supersecret" not in joined
    assert "HF_TOKEN" in joined  # named (checked by name in the launcher), never valued
    assert missing_secrets(cfg) == []


def test_hostile_value_detector_can_fire(tmp_path):
    """Negative control: the same value pasted unquoted into a shell does run code."""
    run_bash(f"echo {hostile(tmp_path)}", {}, cwd=tmp_path)
    with pytest.raises(AssertionError, match="executed"):
        assert_nothing_ran(tmp_path)


# ------------------------------------------------------------------- held client


def _held(tmp_path, *args):
    """A held `python -m` client (a small module that records its argv and exits 3)."""
    (tmp_path / "heldclient.py").write_text(
        "import sys, pathlib\n"
        "if __name__ == '__main__':\n"
        "    pathlib.Path(sys.argv[1]).write_text(' '.join(sys.argv[1:]))\n"
        "    sys.exit(3)\n")
    argv = gated_client_argv([sys.executable, "-m", "heldclient", *args])
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    return subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env, cwd=tmp_path)


def test_held_client_waits_for_sigusr1_then_runs_its_module(tmp_path):
    out = tmp_path / "ran.txt"
    proc = _held(tmp_path, str(out), "--flag", "a b")
    lines = [proc.stdout.readline(), proc.stdout.readline()]
    assert lines[0].startswith(CLIENT_GATE_ARMED) and "heldclient" in lines[0]
    assert "waiting for SIGUSR1" in lines[1]
    # Held: it does not run before the signal.
    with pytest.raises(subprocess.TimeoutExpired):
        proc.wait(timeout=0.5)
    assert not out.exists()
    proc.send_signal(signal.SIGUSR1)
    proc.send_signal(signal.SIGUSR1)  # a repeated start signal does not kill it
    rest, _ = proc.communicate(timeout=30)
    assert CLIENT_GATE_RELEASED in rest
    # Runs as `python -m heldclient ARGS` would: same argv, same exit status.
    assert proc.returncode == 3
    assert out.read_text() == f"{out} --flag a b"


def test_held_client_keeps_a_signal_sent_while_it_imports(tmp_path):
    out = tmp_path / "ran.txt"
    proc = _held(tmp_path, str(out))
    assert proc.stdout.readline().startswith(CLIENT_GATE_ARMED)
    proc.send_signal(signal.SIGUSR1)  # may arrive before the module is imported
    proc.communicate(timeout=30)
    assert proc.returncode == 3 and out.exists()


def test_gated_client_argv_needs_python_dash_m():
    with pytest.raises(ValueError, match="python -m"):
        gated_client_argv(["python", "bench.py"])


@pytest.mark.parametrize("version, dataset, tokenized", [
    ("0.5.5.post2", "random-ids", True),
    ("0.5.5.post2", "random", True),
    ("0.5.5.post2", "sharegpt", False),   # bench_serving asserts it off for sharegpt
    ("0.4.7", "random-ids", True),
    ("0.4.6.post3", "random-ids", False),  # no --tokenize-prompt yet
])
def test_random_prompts_go_out_as_token_ids_where_the_client_can(p3, plan, version, dataset,
                                                                  tokenized):
    """As text, the server tokenizes decoded random ids again and the input length drifts
    (a real 0.5.17 run: up to 316 tokens for 128, refused past the context)."""
    raw = raw_default()
    if version != "0.5.5.post2":
        del raw["server_args"]["decode"]["prefill-round-robin-balance"]
        raw["server_args"]["decode"].pop("cuda-graph-bs-decode", None)
    extra = {"dataset_path": "/d/sg.json"} if dataset == "sharegpt" else {}
    cfg = make(raw, sglang__version=version, workload={"dataset": dataset, **extra},
               site__container__mounts=["/d"])
    argv = client_argv(cfg, p3, plan, output_file="o.jsonl")
    assert ("--tokenize-prompt" in argv) is tokenized
