"""The default config renders the working GB200 launch (docs/recipes/...), or says why not.

Every flag, environment variable, container and allocation option of the runbook
author's launch is compared with what `pdbench render` shows for the default config on
the points of the default grid. A difference must be listed in the recipe's
``intended_differences`` with its reason, and a listed difference must still exist.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml

from pdbench import config as config_mod
from pdbench import topology
from pdbench.commands import server_env
from pdbench.render import render_point

REPO = Path(__file__).resolve().parents[1]
RECIPE = yaml.safe_load((REPO / "docs/recipes/gb200-fp4-v0.5.5.post2.yaml").read_text())
NODES = topology.expand_nodelist("gb-[001-018]")


def options(argv: list[str], start: int = 0) -> dict:
    """``--flag value...`` / ``--flag=value`` / bare ``--flag`` -> {flag: value or True}."""
    out: dict = {}
    i = start
    while i < len(argv):
        token = argv[i]
        if not token.startswith("--"):
            i += 1
            continue
        name, eq, value = token[2:].partition("=")
        if eq:
            out[name] = value
            i += 1
            continue
        values = []
        i += 1
        while i < len(argv) and not argv[i].startswith("--"):
            values.append(argv[i])
            i += 1
        out[name] = " ".join(values) if values else True
    return out


def first_exec(script: str) -> list[str]:
    """Node rank 0's command in a launcher script (its ``exec … > log 2>&1`` line)."""
    line = next(ln.strip() for ln in script.splitlines() if ln.strip().startswith("exec "))
    argv = shlex.split(line[len("exec "):])
    return argv[: argv.index(">")] if ">" in argv else argv


def differ(section: str, want: dict, have: dict, subst: dict) -> set[str]:
    """Keys ``section.name`` whose values differ; ``<...>`` in the recipe = any value."""
    found = set()
    for name in set(want) | set(have):
        expected = want.get(name)
        if isinstance(expected, str):
            for var, value in subst.items():
                expected = expected.replace(var, value)
        got = have.get(name)
        if isinstance(expected, str) and expected.startswith("<") and got is not None:
            continue
        if expected != got:
            found.add(f"{section}.{name}")
    return found


def point_differences(cfg: dict, name: str, workdir: Path) -> set[str]:
    sections = render_point(cfg, "ep48", name, NODES, job_id=1)
    text = {s["title"].split(":")[0] + (":" + s["kind"]): s["text"] for s in sections}
    plan = topology.plan(config_mod.find_point(cfg, "ep48", name), NODES, cfg["ports"])
    subst = {"$PREFILL_HEAD_NODE": plan.prefill[0].node_names[0],
        "$DECODE_HEAD_NODE": plan.decode.node_names[0], "$NODE_RANK": "0",
        "$PWD": str(workdir)}
    found = set()

    sbatch = shlex.split(sections[0]["text"])
    have = options(sbatch)
    have = {k: v for k, v in have.items() if k in RECIPE["allocation"] or k in
            ("nodes", "partition", "mem", "segment", "exclusive", "time", "gpus-per-node")}
    found |= differ("allocation", RECIPE["allocation"], have, subst)

    srun = shlex.split(text["decode:shell"])
    have = {k: v for k, v in options(srun[: srun.index("bash")]).items()
            if k.startswith(("container-", "no-container")) or k == "ntasks-per-node"}
    have.pop("container-image")
    found |= differ("srun", RECIPE["srun"], have, subst)

    for role in ("prefill", "decode"):
        want = {**RECIPE["env"]["common"], **RECIPE["env"].get(role, {})}
        have = server_env(cfg, role, shared_dir=workdir / "results/ep48" / name)
        for var, value in list(want.items()):
            if value == "per-role":  # a directory of this role's own
                want[var] = have.get(var) if f"/{role}/" in have.get(var, "") else "per-role"
        found |= {k.replace(f"env.{role}.", "env.common.")
                  if k.split(".")[-1] in RECIPE["env"]["common"] else k
                  for k in differ(f"env.{role}", want, have, subst)}

        argv = first_exec(text[f"{'prefill-1' if role == 'prefill' else 'decode'}:file"])
        have = options(argv, argv.index("-m") + 2)
        have.pop("model-path")
        found |= differ(role, RECIPE[role], have, subst)

    router = first_exec(text["router:file"])
    if name == "p1":  # the scripts start one prefill group
        found |= differ("router", RECIPE["router"], {"module": router[2],
                                                     **options(router, 3)}, subst)

    client = shlex.split(next(s["text"] for s in sections
                              if s["title"].startswith("client: the benchmark command")))
    got = options(client, 3)
    have = {"module": client[2],
            "batch-size": got.get("num-prompts") or got.get("batch-size"),
            "input-len": got.get("random-input-len") or got.get("input-len"),
            "output-len": got.get("random-output-len") or got.get("output-len"),
            "skip-warmup": got.get("warmup-requests") == "0" or got.get("skip-warmup")}
    found |= differ("client", RECIPE["client"], have, subst)
    return found


@pytest.fixture(scope="module")
def differences(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("work")
    import os

    here = os.getcwd()
    os.chdir(workdir)
    try:
        cfg = config_mod.validate(yaml.safe_load((REPO / "config/config.yaml").read_text()),
                                  workdir=workdir)
        assert cfg["sglang"]["version"] == RECIPE["release"]
        found: set[str] = set()
        for point in config_mod.grid_points(cfg):
            found |= point_differences(cfg, point.name, workdir)
    finally:
        os.chdir(here)
    return found


def test_every_difference_from_the_working_launch_is_intended(differences):
    unexplained = sorted(differences - set(RECIPE["intended_differences"]))
    assert unexplained == [], (
        "the default config's launch differs from the working GB200 launch here; fix the "
        "config or list the difference with its reason in the recipe's intended_differences")


def test_no_intended_difference_is_stale(differences):
    stale = sorted(set(RECIPE["intended_differences"]) - differences)
    assert stale == [], "listed as intended but no longer different: remove from the recipe"


def test_the_comparison_can_fail():
    assert differ("decode", {"context-length": "2176"}, {"context-length": "2716"}, {}) == {
        "decode.context-length"}
    assert differ("decode", {"x": True}, {}, {}) == {"decode.x"}
    assert differ("decode", {}, {"y": "1"}, {}) == {"decode.y"}
    assert differ("decode", {"m": "<any>"}, {"m": "/models/a"}, {}) == set()
