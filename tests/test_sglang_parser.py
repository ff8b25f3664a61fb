"""Rendered 0.5.23 commands are accepted by SGLang 0.5.23's own argument parsers.

Needs the SGLang virtualenv (``scripts/setup-sglang-venv``; its Python is
``$PDBENCH_SGLANG_PYTHON`` or ``.venv-sglang/bin/python``). Without it the tests skip
locally and fail under CI (``CI`` set), where the check must run.
"""

from __future__ import annotations

import copy
from dataclasses import replace
import os
from pathlib import Path

import pytest
import yaml

from pdbench import config as config_mod
from pdbench import topology
from pdbench.commands import client_argv, router_argv, server_argvs
from sglang_check import check_argvs

pytestmark = pytest.mark.sglang

REPO = Path(__file__).resolve().parents[1]
PYTHON = Path(os.environ.get("PDBENCH_SGLANG_PYTHON") or REPO / ".venv-sglang/bin/python")


def _config(router_implementation: str = "sglang-router", **workload) -> dict:
    raw = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    raw = copy.deepcopy(raw)
    raw["sglang"]["version"] = "0.5.23"
    # Removed in 0.5.8: decode and prefill agree on DP ranks through --load-balance-method.
    del raw["server_args"]["decode"]["prefill-round-robin-balance"]
    raw["grid"]["eplb"] = ["none", "static", "online"]
    raw["site"]["container"]["mounts"] = ["/shared"]
    raw["eplb"] = {"static": {"init_expert_location": "/shared/eplb/expert_distribution.pt"},
                   "online": {"rebalance_layers_per_chunk": 8,
                              "min_rebalancing_utilization_threshold": 0.9},
                   "redundant_experts": 32}
    raw["workload"] = {**raw.get("workload", {}), **workload}
    raw["router"] = {**raw.get("router", {}), "implementation": router_implementation}
    return config_mod.validate(raw, workdir=REPO)


def _cases() -> list[tuple[str, list[str]]]:
    """(label, argv) for every node of every server of every EPLB mode, and the rest."""
    cfg = _config()
    nodes = topology.expand_nodelist("gb-[001-018]")
    cases = []
    for point in config_mod.grid_points(cfg):
        if point.prefill_groups != 3:
            continue
        plan = topology.plan(point, nodes, cfg["ports"])
        # a none point also as static EPLB's recording pass
        variants = [point, replace(point, records_experts=True)] if point.eplb == "none" \
            else [point]
        for variant in variants:
            stage = "record" if variant.records_experts else "-"
            for server in plan.servers:
                for rank, argv in enumerate(server_argvs(cfg, variant, plan, server.name)):
                    cases.append((f"{point.name}/{stage}/{server.name}/{rank}", argv))
        if point.eplb == "none":
            cases.append(("router", router_argv(cfg, plan)))
            cases.append(("router-smg", router_argv(_config(router_implementation="smg"), plan)))
            cases.append(
                ("bench_serving", client_argv(cfg, point, plan, output_file="/r/bench.jsonl"))
            )
            # 0.5.23's bench_one_batch_server reads /server_info, which no router serves:
            # the config refuses the pair, so the argv is rendered from a validated config
            # switched to that client (its parser is what is checked here).
            one = copy.deepcopy(cfg)
            one["workload"]["client"] = "bench_one_batch_server"
            cases.append(
                (
                    "bench_one_batch_server",
                    client_argv(one, point, plan, output_file="/r/bench.jsonl"),
                )
            )
    # A shared-host plan (the rehearsal's per-node ports).
    point = config_mod.grid_points(cfg)[0]
    local = [f"node{i}" for i in range(16)]
    plan = topology.plan(point, local, cfg["ports"], {n: "127.0.0.1" for n in local})
    for server in plan.servers:
        for rank, argv in enumerate(server_argvs(cfg, point, plan, server.name)):
            cases.append((f"shared-host/{server.name}/{rank}", argv))
    return cases


NEGATIVE = [
    # The pre-0.5.14 spelling of the decode cuda-graph batch sizes.
    ("old --cuda-graph-bs", "ambiguous option: --cuda-graph-bs could match"),
    # Removed in v0.5.5.
    ("old --enable-deepep-moe", "unrecognized arguments: --enable-deepep-moe"),
]


def _negative_argvs(decode_argv: list[str]) -> list[list[str]]:
    i = decode_argv.index("--cuda-graph-bs-decode")
    old_cg = [*decode_argv[:i], "--cuda-graph-bs", *decode_argv[i + 1 :]]
    j = decode_argv.index("--moe-a2a-backend")
    old_deepep = [*decode_argv[:j], "--enable-deepep-moe", *decode_argv[j + 2 :]]
    return [old_cg, old_deepep]


@pytest.fixture(scope="module")
def checked():
    if not PYTHON.exists():
        reason = (
            f"SGLang virtualenv not found ({PYTHON}); create it with scripts/setup-sglang-venv "
            "or set PDBENCH_SGLANG_PYTHON"
        )
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail(f"CI must check rendered commands with SGLang's parser: {reason}")
        pytest.skip(reason)
    cases = _cases()
    decode = next(argv for label, argv in cases if label == "p3/-/decode/5")
    argvs = [argv for _, argv in cases] + _negative_argvs(decode)
    results = check_argvs(argvs, python=PYTHON)
    positive = dict(zip([label for label, _ in cases], results[: len(cases)]))
    return cases, positive, results[len(cases) :]


def test_parser_is_sglang_0_5_23(checked):
    _, positive, _ = checked
    assert {r["sglang_version"] for r in positive.values()} == {"0.5.23"}


def test_every_rendered_command_parses(checked):
    cases, positive, _ = checked
    assert len(positive) == len(cases) == 90  # 4 x 18 server nodes, 4, 14 shared-host
    failed = {label: r["error"] for label, r in positive.items() if not r["ok"]}
    assert failed == {}


def test_parsed_values_mean_what_was_meant(checked):
    _, positive, _ = checked
    decode = positive["p3/-/decode/5"]["explicit"]
    assert decode["cuda_graph_bs_decode"] == [1024]
    assert decode["attn_dp_size"] == 48
    assert decode["tp_size"] == 48 and decode["ep_size"] == 48
    assert decode["node_rank"] == 5 and decode["nnodes"] == 12
    assert decode["moe_a2a_backend"] == "deepep"
    assert decode["disaggregation_mode"] == "decode"
    assert decode["host"] == "0.0.0.0"
    assert decode["max_running_requests"] == 49152
    prefill = positive["p3/-/prefill-2/1"]["explicit"]
    assert prefill["disaggregation_bootstrap_port"] == 8991  # the runbook's; SGLang's is 8998
    shared = positive["shared-host/prefill-1/1"]["explicit"]
    assert shared["disaggregation_bootstrap_port"] == 31091
    assert shared["port"] == 31001
    assert shared["dist_init_addr"] == "127.0.0.1:31090"
    assert prefill["disable_cuda_graph"] is True
    static = positive["p3-eplb_static/-/decode/0"]["explicit"]
    assert static["init_expert_location"] == "/shared/eplb/expert_distribution.pt"
    record = positive["p3/record/decode/0"]["explicit"]
    assert record["expert_distribution_recorder_mode"] == "stat"
    assert record["expert_distribution_recorder_buffer_size"] == -1
    online = positive["p3-eplb_online/-/decode/0"]["explicit"]
    assert online["enable_eplb"] is True and online["eplb_algorithm"] == "deepseek"
    assert online["eplb_rebalance_layers_per_chunk"] == 8
    assert online["eplb_min_rebalancing_utilization_threshold"] == 0.9
    assert online["ep_num_redundant_experts"] == 32
    assert static["ep_num_redundant_experts"] == 32
    for label in ("router", "router-smg"):
        router = positive[label]["explicit"]
        assert router["pd_disaggregation"] is True
        assert len(router["prefill"]) == 3
    assert positive["router-smg"]["module"] == "smg.launch_router"


def test_only_known_deprecations(checked):
    """0.5.23 warns about --disable-cuda-graph (prefill recipe) and nothing else."""
    _, positive, _ = checked
    warnings = {
        w
        for label, r in positive.items()
        if label.startswith(("p", "shared"))
        for w in r["warnings"]
    }
    assert warnings == {
        "'--disable-cuda-graph' is deprecated and will be removed in a future release. "
        "Use '--cuda-graph-backend-{decode,prefill}=disabled' instead."
    }
    for label, r in positive.items():
        if "/decode/" in label:
            assert r["warnings"] == [], label


@pytest.mark.parametrize("index", range(len(NEGATIVE)), ids=[n for n, _ in NEGATIVE])
def test_old_spellings_are_rejected(checked, index):
    """Negative controls: the check can fail."""
    _, _, negative = checked
    result = negative[index]
    assert result["ok"] is False
    assert NEGATIVE[index][1] in result["error"]
