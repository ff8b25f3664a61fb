"""Node and port plan: layout, ports on distinct and shared hosts, node_list_env.sh."""

import os
import subprocess
from pathlib import Path

import pytest

from pdbench import config, topology
from pdbench.errors import ConfigError, PdbenchError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cfg():
    return config.load(REPO / "config" / "config.yaml")


def point(cfg, name):
    return config.find_point(cfg, "ep48", name)


def test_expand_nodelist():
    assert topology.expand_nodelist("gb-[001-003,007]") == ["gb-001", "gb-002", "gb-003", "gb-007"]
    assert topology.expand_nodelist("a[1-2]-ib[0-1]") == ["a1-ib0", "a1-ib1", "a2-ib0", "a2-ib1"]
    assert topology.expand_nodelist("x01,y02") == ["x01", "y02"]
    with pytest.raises(PdbenchError, match="bad Slurm node list"):
        topology.expand_nodelist("gb-[003-001")
    with pytest.raises(PdbenchError, match="empty"):
        topology.expand_nodelist(" ")


def test_runbook_layout_p1(cfg):
    plan = topology.plan(point(cfg, "p1"), topology.expand_nodelist("gb-[001-014]"), cfg["ports"])
    assert plan.prefill[0].node_names == ["gb-001", "gb-002"]
    assert plan.decode.node_names == [f"gb-{i:03d}" for i in range(3, 15)]
    assert plan.router_node == plan.client_node == "gb-001"
    assert not plan.shared_host
    assert plan.decode.url == "http://gb-003:30000"
    assert plan.prefill[0].dist_init_addr == "gb-001:5757"
    assert plan.decode.dist_init_addr == "gb-003:5757"
    assert plan.prefill[0].bootstrap_port == 8991
    assert plan.router_url == "http://gb-001:7000"
    assert (plan.decode.tp, plan.decode.dp, plan.decode.ep) == (48, 48, 48)
    assert plan.prefill[0].tp == 8


def test_three_groups_and_unused_nodes(cfg):
    nodes = topology.expand_nodelist("n[01-20]")
    plan = topology.plan(point(cfg, "p3"), nodes, cfg["ports"])
    assert [s.node_names for s in plan.prefill] == [["n01", "n02"], ["n03", "n04"], ["n05", "n06"]]
    assert plan.decode.node_names[0] == "n07" and len(plan.decode.nodes) == 12
    assert plan.unused_nodes == ("n19", "n20")


def test_too_few_nodes(cfg):
    with pytest.raises(ConfigError, match="needs 18 nodes .* has 16"):
        topology.plan(point(cfg, "p3"), topology.expand_nodelist("n[01-16]"), cfg["ports"])


def test_shared_host_ports_never_collide(cfg):
    nodes = topology.expand_nodelist("node[01-18]")
    plan = topology.plan(point(cfg, "p3"), nodes, cfg["ports"], {n: "127.0.0.1" for n in nodes})
    assert plan.shared_host
    bound = [n.http_port for s in plan.servers for n in s.nodes]
    bound += [s.dist_init_port for s in plan.servers]
    bound += [s.bootstrap_port for s in plan.prefill]
    bound.append(plan.router_port)
    assert len(bound) == len(set(bound)) == 18 + 4 + 3 + 1
    # The decode head serves the API; its URL uses its own port.
    assert plan.decode.url == f"http://127.0.0.1:{plan.decode.head.http_port}"
    assert {n.http_port for n in plan.decode.nodes} != {plan.decode.head.http_port}


def test_env_sh_is_sourceable_and_keeps_runbook_names(cfg, tmp_path):
    nodes = topology.expand_nodelist("gb-[001-016]")
    plan = topology.plan(point(cfg, "p2"), nodes, cfg["ports"])
    env_file = tmp_path / "node_list_env.sh"
    env_file.write_text(plan.to_env_sh())
    out = subprocess.run(
        ["bash", "-c", f". {env_file} && env"],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": os.environ["PATH"]},
    ).stdout
    env = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    assert env["PREFILL_NODE_LIST"] == "gb-001,gb-002"
    assert env["PREFILL_HEAD_NODE"] == "gb-001"
    assert env["DECODE_NODE_LIST"] == ",".join(f"gb-{i:03d}" for i in range(5, 17))
    assert env["DECODE_HEAD_NODE"] == "gb-005"
    assert env["HEAD_NODE"] == "gb-001"
    assert env["NODE_LIST"].split(",") == nodes
    assert env["PREFILL_GROUPS"] == "2"
    assert env["PREFILL_2_NODE_LIST"] == "gb-003,gb-004"
    assert env["PREFILL_2_URL"] == "http://gb-003:30000"
    assert env["DECODE_URL"] == "http://gb-005:30000"
    assert env["ROUTER_URL"] == "http://gb-001:7000"
    assert "PREFILL_3_NODE_LIST" not in env


def test_plan_json_roundtrip(cfg):
    import json

    nodes = topology.expand_nodelist("gb-[001-014]")
    data = json.loads(topology.plan(point(cfg, "p1"), nodes, cfg["ports"]).to_json())
    assert data["nodelist"] == "gb-[001-014]"
    assert data["decode"]["nodes"][11]["node"] == "gb-014"
    assert data["prefill"][0]["bootstrap_port"] == 8991
    assert data["router"]["url"] == "http://gb-001:7000"
