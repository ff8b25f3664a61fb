"""One results layout: pdbench.layout is the only place that names files under results/."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from pdbench.layout import POINT_FILES, PointPaths, ResultsPaths

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "pdbench"

# File and directory names of the results tree (layout.py spells each once).
NAMES = ("allocation.json", "allocation.pending.json", "node_list_env.sh", "plan.json",
         "filled.json", "released.json", "curve.csv", "snapshot.json", "client.json",
         "client-output.jsonl", "bench.jsonl", "throughput.csv", "teardown.json",
         "measurement.json", "manifest.json", "versions.json", "report.html", "run-failed", "run-keep-going", "_node_rank_", ".srun.sh",
         ".srun.log", "allocation-%j.out", ".pdbench")
# Directory names: forbidden as the right-hand side of a path join (``x / "ready"``).
DIRS = ("ready", "fill", "profile", "bench", "logs", "commands", "attempts", "traces",
        "sweep", "server_info", "figures")
# The emulator writes SGLang's own files (its logs and traces), not results/ ones.
EXEMPT = {SRC / "layout.py"}


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = getattr(node, "body", [])
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def _violations(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    docs = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        # Prose (help texts, comments written into files) names files; paths have no spaces.
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                id(node) not in docs and not re.search(r"\s", node.value):
            for name in NAMES:
                if name in node.value:
                    found.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.value!r}")
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) and isinstance(
                node.right, ast.Constant) and node.right.value in DIRS:
            found.append(f"{path.relative_to(REPO)}:{node.lineno}: / {node.right.value!r}")
    return found


def test_no_results_file_name_outside_the_layout():
    files = [p for p in SRC.rglob("*.py") if p not in EXEMPT and "emulator" not in p.parts]
    assert len(files) > 20
    found = [v for f in files for v in _violations(f)]
    assert found == [], "results/ names spelled outside pdbench.layout:\n" + "\n".join(found)


def test_the_check_can_fail(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text('"""doc naming allocation.json is fine"""\n'
                   'p = root / "ready" / "decode.json"\nq = "x/throughput.csv"\n')
    bad_rel = bad  # report paths relative to the repository: use a file inside it
    inside = REPO / "tests" / "_layout_probe.py"
    inside.write_text(bad.read_text())
    try:
        found = _violations(inside)
    finally:
        inside.unlink()
    assert len(found) == 2 and bad_rel.exists()


@pytest.mark.parametrize("path", [REPO / "Snakefile", *sorted((REPO / "workflow/rules")
                                                               .glob("*.smk"))],
                         ids=lambda p: p.name)
def test_rules_take_their_paths_from_the_layout(path):
    code = [line for line in path.read_text().splitlines()
            if line.strip() and not line.strip().startswith("#")]
    found = [line for line in code for name in (*NAMES, "results/") if name in line]
    assert found == []


def test_readme_table_is_the_layouts():
    readme = (REPO / "README.md").read_text()
    table = readme[readme.index("| file | what |"):].split("\n\n", 1)[0]
    names = re.findall(r"^\| `([^`]+)` \|", table, re.M)
    assert names == list(POINT_FILES)


def test_templates_for_the_rules():
    """The rules use the layout with wildcard names; the paths keep the wildcards."""
    point = ResultsPaths(Path("results")).point("{experiment}", "{point}")
    assert str(point.ready("prefill-{group}")) == \
        "results/{experiment}/{point}/ready/prefill-{group}.json"
    assert str(point.snapshot("{snapshot}")) == \
        "results/{experiment}/{point}/profile/{snapshot}/snapshot.json"
    assert str(point.stage_log("profile-{snapshot}")) == \
        "results/{experiment}/{point}/logs/profile-{snapshot}.log"
    assert PointPaths.of("results", "ep48", "p2").results.root == Path("results")
