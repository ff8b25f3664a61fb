"""Every server command the default config renders passes SGLang's own ServerArgs
validation, for the configured release (0.5.5.post2) and the newest (0.5.23).

Parsing (tests/test_sglang_parser.py) only proves each flag exists; here each command
becomes the release's ``ServerArgs`` and is resolved as the release resolves it before
a server starts, so its assertions run (e.g. 0.5.5.post2 asserts
``--prefill-round-robin-balance`` for a DP-attention decode server). The checkpoint is a
configuration-only stand-in (tests/data/models) and the GPU a GB200 stand-in
(tests/sglang_check.py). Needs the SGLang virtualenv and, for 0.5.5.post2,
``scripts/setup-sglang-release 0.5.5.post2`` (both done by scripts/setup); under CI a
missing one is a failure, locally a skip.
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
from pdbench.commands import server_argvs
from sglang_check import check_argvs

pytestmark = pytest.mark.sglang

REPO = Path(__file__).resolve().parents[1]
PYTHON = Path(os.environ.get("PDBENCH_SGLANG_PYTHON") or REPO / ".venv-sglang/bin/python")
MODEL = REPO / "tests/data/models/DeepSeek-R1-0528-FP4"
NODES = topology.expand_nodelist("gb-[001-018]")
CONFIGURED = yaml.safe_load((REPO / "config/config.yaml").read_text())["sglang"]["version"]


def _require(path: Path, how: str) -> None:
    if path.exists():
        return
    reason = f"{path} not found; {how}"
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        pytest.fail(f"CI must validate rendered commands with SGLang's ServerArgs: {reason}")
    pytest.skip(reason)


def _release_path(version: str) -> Path | None:
    if version == "0.5.23":
        return None  # the virtualenv's own SGLang
    path = REPO / ".cache/sglang-releases" / version
    _require(path / ".pdbench-complete", f"run scripts/setup-sglang-release {version}")
    return path


def _config(version: str) -> dict:
    raw = copy.deepcopy(yaml.safe_load((REPO / "config/config.yaml").read_text()))
    raw["sglang"]["version"] = version
    if version == "0.5.23":
        # Removed in 0.5.8 (decode and prefill agree through --load-balance-method).
        del raw["server_args"]["decode"]["prefill-round-robin-balance"]
    raw["grid"]["eplb"] = ["none", "static", "online"]
    raw["site"]["container"]["mounts"] = ["/shared"]
    raw["eplb"] = {"static": {"init_expert_location": "/shared/eplb/expert_distribution.pt"},
                   "online": {"rebalance_layers_per_chunk": 8,
                              "min_rebalancing_utilization_threshold": 0.9},
                   "redundant_experts": 32}
    return config_mod.validate(raw, workdir=REPO)


def _cases(version: str) -> list[tuple[str, list[str]]]:
    """Node ranks 0 and 1 of every server of every p3 point (ranks >= 1 differ only in
    --node-rank), every EPLB mode and the static mode's recording pass; the decode's
    last rank too."""
    cfg = _config(version)
    cases = []
    for point in config_mod.grid_points(cfg):
        if point.prefill_groups != 3:
            continue
        plan = topology.plan(point, NODES, cfg["ports"])
        # a none point also as static EPLB's recording pass
        variants = [point, replace(point, records_experts=True)] if point.eplb == "none" \
            else [point]
        for variant in variants:
            stage = "record" if variant.records_experts else "-"
            for server in plan.servers:
                argvs = server_argvs(cfg, variant, plan, server.name)
                for rank in sorted({0, 1, len(argvs) - 1}):
                    cases.append((f"{point.name}/{stage}/{server.name}/{rank}", argvs[rank]))
    return cases


@pytest.fixture(scope="module", params=[CONFIGURED, "0.5.23"])
def validated(request):
    _require(PYTHON, "create it with scripts/setup-sglang-venv")
    version = request.param
    sglang_path = _release_path(version)
    cases = _cases(version)
    decode = dict(cases)["p3/-/decode/0"]
    # Negative controls: what the checks must catch.
    without_balance = [a for a in decode if a != "--prefill-round-robin-balance"]
    hopper = decode  # trtllm_mla is a Blackwell kernel
    argvs = [argv for _, argv in cases]
    results = check_argvs(argvs + [without_balance], python=PYTHON, sglang_path=sglang_path,
                          validate={"model_path": MODEL, "device": "gb200"})
    on_h100 = check_argvs([hopper], python=PYTHON, sglang_path=sglang_path,
                          validate={"model_path": MODEL, "device": "h100"})
    return version, dict(zip([label for label, _ in cases], results)), results[len(cases)], \
        on_h100[0]


def test_validator_runs_the_intended_release(validated):
    version, results, _, _ = validated
    assert {r["sglang_version"] for r in results.values()} == {version}


def test_every_rendered_server_command_passes_serverargs(validated):
    _, results, _, _ = validated
    assert len(results) == 4 * 9  # none, static, static recording pass, online; 9 each
    failed = {label: r["error"] or r["validation_error"] for label, r in results.items()
              if not (r["ok"] and r["validated"])}
    assert failed == {}


def test_validation_catches_what_parsing_cannot(validated):
    version, _, without_balance, on_h100 = validated
    assert without_balance["ok"] is True  # the parser accepts it either way
    if version == CONFIGURED:
        assert without_balance["validated"] is False
        assert "Prefill round robin balance is required when dp size > 1" in \
            without_balance["validation_error"]
    else:  # 0.5.23: the option and its assertion are gone
        assert without_balance["validated"] is True
    if version == "0.5.23":
        assert on_h100["validated"] is False
        assert "TRTLLM MLA backend is only supported on Blackwell" in \
            on_h100["validation_error"]
