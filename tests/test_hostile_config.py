"""A corpus of bad configs, by class: each is refused before any job with one line that
names the key (or the file), never a traceback; a sample of each class also fails the
workflow's dry run."""

from __future__ import annotations

import copy
import shutil
import time
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pdbench import config
from pdbench.cli import main
from pdbench.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
BASE = yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def _set(cfg: dict, key: str, value) -> dict:
    """``key`` is a dotted path; ``name[i]`` indexes a list."""
    node = cfg
    parts = key.split(".")
    for part in parts[:-1]:
        name, _, index = part.partition("[")
        node = node.setdefault(name, {})
        if index:
            node = node[int(index[:-1])]
    last = parts[-1]
    name, _, index = last.partition("[")
    if index:
        node.setdefault(name, [None])[int(index[:-1])] = value
    else:
        node[name] = value
    return cfg


NUMBER_FIELDS = ["workload.random_range_ratio", "workload.request_rate",
                 "fill.target_fraction", "fill.timeout_s", "fill.min_batch_fraction",
                 "fill.sleep_s", "profile.interval_s", "profile.log_step_tolerance",
                 "timeouts.server_ready_s", "timeouts.router_ready_s",
                 "timeouts.server_stall_s"]
INTEGER_FIELDS = ["site.gpus_per_node", "site.max_nodes", "site.allocation_job_id",
                  "grid.ep_sizes[0]", "grid.prefill_groups[0]",
                  "topology.nodes_per_prefill_group", "ports.http", "ports.bootstrap",
                  "ports.dist_init", "ports.router", "ports.shared_host_base",
                  "workload.input_len", "workload.output_len", "workload.num_prompts",
                  "workload.batch_size", "workload.max_concurrency",
                  "fill.plateau_forwards", "profile.snapshots", "profile.num_steps",
                  "eplb.online.rebalance_num_iterations"]

CASES: list[tuple[str, str, object, str]] = []  # (class, key, value, expected in message)
for key in NUMBER_FIELDS:
    for bad in (float("nan"), float("inf"), float("-inf")):
        CASES.append(("non-finite number", key, bad, key))
for key in INTEGER_FIELDS:
    CASES.append(("float for an integer", key, 48.0, key))
    CASES.append(("boolean for an integer", key, True, key))
    CASES.append(("string for an integer", key, "48", key))
CASES += [
    ("absurd size", "profile.snapshots", 1_000_000, "profile.snapshots"),
    ("absurd size", "profile.num_steps", 10**9, "profile.num_steps"),
    ("absurd size", "grid.ep_sizes", [100_000], "grid.ep_sizes"),
    ("absurd size", "fill.timeout_s", 1e9, "fill.timeout_s"),
    ("absurd size", "profile.interval_s", 1e7, "profile.interval_s"),
    ("absurd size", "site.gpus_per_node", 1000, "site.gpus_per_node"),
    ("absurd size", "workload.input_len", 10**9, "workload.input_len"),
    ("out of range", "site.allocation_job_id", -1, "site.allocation_job_id"),
    ("out of range", "site.allocation_job_id", 0, "site.allocation_job_id"),
    ("out of range", "site.gpus_per_node", 0, "site.gpus_per_node"),
    ("out of range", "fill.sleep_s", 0, "fill.sleep_s"),
    ("out of range", "fill.sleep_s", -1, "fill.sleep_s"),
    ("out of range", "fill.sleep_s", 10_000, "fill.sleep_s"),
    ("out of range", "fill.sleep_s", "fast", "fill.sleep_s"),
    ("out of range", "workload.request_rate", 0, "workload.request_rate"),
    ("out of range", "workload.request_rate", "infinite", "workload.request_rate"),
    ("out of range", "grid.prefill_groups", [4], "grid.prefill_groups"),
    ("duplicates in a list", "grid.ep_sizes", [48, 48], "grid.ep_sizes"),
    ("duplicates in a list", "grid.eplb", ["none", "none"], "grid.eplb"),
    ("control character", "site.time_limit", "04:00:00\n", "site.time_limit"),
    ("control character", "site.partition", "batch\n", "site.partition"),
    ("control character", "site.account", "acct\r", "site.account"),
    ("control character", "site.container.image", "img\t:tag", "site.container.image"),
    ("control character", "model.path", "models/a\x00b", "model.path"),
    ("control character", "sglang.version", "0.5.5\n", "sglang.version"),
    ("control character", "site.secret_env", ["HF_TOKEN\n"], "site.secret_env[0]"),
    ("control character", "site.sbatch_extra", ["--comment=a\nb"], "site.sbatch_extra[0]"),
    ("control character", "server_args.decode.watchdog-timeout", "10\n",
     "server_args.decode.watchdog-timeout"),
    ("control character", "site.mem", "0\n", "site.mem"),
    ("port conflict", "ports.router", 30000, "ports.router"),
    ("port conflict", "ports.dist_init", 8991, "ports.dist_init"),
    ("port conflict", "ports.http", 7001, "ports.router"),
    ("port conflict", "ports.bootstrap", 30000, "ports.bootstrap"),
    ("no container but container settings", "site.container.extra_args",
     ["--no-container-remap-root"], "site.container.extra_args"),
    ("no container but container settings", "site.container.mounts", ["/lustre:/lustre"],
     "site.container.mounts"),
    ("static EPLB without its source", "grid.eplb", ["static", "online"],
     "eplb.static.init_expert_location"),
    ("secret as a plain value", "env.common.HF_TOKEN", "hf_abc", "env.common.HF_TOKEN"),
    ("secret as a plain value", "env.decode.WANDB_API_KEY", "k", "env.decode.WANDB_API_KEY"),
    ("secret as a plain value", "site.env.AWS_SECRET_ACCESS_KEY", "s",
     "site.env.AWS_SECRET_ACCESS_KEY"),
    ("secret as a plain value", "env.prefill.DB_PASSWORD", "p", "env.prefill.DB_PASSWORD"),
    ("derived flag", "server_args.decode.tp-size", 8, "server_args.decode.tp-size"),
    ("derived flag", "server_args.common.model-path", "x", "server_args.common.model-path"),
    ("out of range", "site.launcher", "srun", "site.launcher"),
    ("out of range", "site.local.gpus", [], "site.local.gpus"),
    ("out of range", "site.local.gpus", [-1], "site.local.gpus[0]"),
    ("string for an integer", "site.local.gpus", ["0"], "site.local.gpus[0]"),
    ("duplicates in a list", "site.local.gpus", [0, 0], "site.local.gpus"),
    ("control character", "site.local.address", "127.0.0.1\n", "site.local.address"),
    ("injection", "site.local.address", "127.0.0.1;reboot", "site.local.address"),
    ("unknown key", "site.local.gpu", [0], "site.local"),
    ("unknown key", "site.partitions", "batch", "site"),
    ("unknown key", "profil.snapshots", 3, "profil"),
]


def _cfg_with(key: str, value) -> dict:
    cfg = copy.deepcopy(BASE)
    if key == "site.container.extra_args" or key == "site.container.mounts":
        cfg["site"].setdefault("container", {})["runtime"] = "none"
    return _set(cfg, key, value)


@pytest.mark.parametrize("cls, key, value, named", CASES,
                         ids=[f"{c[0]}:{c[1]}={c[2]!r}"[:80] for c in CASES])
def test_bad_config_is_refused_naming_the_key(cls, key, value, named, tmp_path, capsys):
    cfg = _cfg_with(key, value)
    with pytest.raises(ConfigError) as err:
        config.validate(cfg)
    message = str(err.value)
    assert named in message and "\n" not in message, message
    # The command line says the same in one line, exit status 2, no traceback.
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=False))
    assert main(["validate-config", str(path)]) != 0
    err_text = capsys.readouterr().err
    assert named in err_text and "Traceback" not in err_text, err_text
    assert len(err_text.strip().splitlines()) == 1, err_text


FILES = [
    ("not a mapping", b"- grid\n- site\n", "the top level must be a mapping"),
    ("not a mapping", b"just text\n", "the top level must be a mapping"),
    ("not a mapping", b"42\n", "the top level must be a mapping"),
    ("not UTF-8", "grid:\n  eplb: [none]\nsite:\n  partition: caf\u00e9\n".encode("latin-1"),
     "is not UTF-8 text (byte 0xe9"),
    ("not UTF-8", "grid: {}\n".encode("utf-16"), "is not UTF-8 text"),
    ("duplicate key", b"grid:\n  ep_sizes: [48]\ngrid:\n  ep_sizes: [16]\n",
     "found key 'grid' twice (first on line 1)"),
    ("duplicate key", b"grid:\n  prefill_groups: [1, 2]\n  prefill_groups: [3]\n",
     "found key 'prefill_groups' twice (first on line 2)"),
    ("not YAML", b"grid: [\n", "is not valid YAML"),
    ("NaN in YAML", b"fill:\n  target_fraction: .nan\n", "fill.target_fraction"),
    ("infinity in YAML", b"profile:\n  interval_s: .inf\n", "profile.interval_s"),
]


@pytest.mark.parametrize("cls, content, expected", FILES, ids=[f[0] for f in FILES])
def test_bad_config_file_is_refused_in_one_line(cls, content, expected, tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=None) as err:
        config.load(path)
    assert expected in str(err.value) and str(path) in str(err.value), str(err.value)
    assert main(["validate-config", str(path)]) != 0
    err_text = capsys.readouterr().err
    assert expected in err_text and len(err_text.strip().splitlines()) == 1, err_text


# Snakemake decodes a --configfile itself before the workflow is read: a file that is not
# UTF-8 is its traceback, out of the workflow's reach (pdbench validate-config names the
# byte, above). Every other bad file is refused by the workflow's parse.
DRY_RUN_FILES = [f for f in FILES if f[0] != "not UTF-8"]


@pytest.mark.parametrize("cls, content, expected", DRY_RUN_FILES,
                         ids=[f[0] for f in DRY_RUN_FILES])
def test_bad_config_file_fails_the_dry_run(cls, content, expected, workdir):
    path = workdir / "bad.yaml"
    path.write_bytes(content)
    exe = shutil.which("snakemake") or str(Path(sys.executable).parent / "snakemake")
    proc = subprocess.run([exe, "-n", "--configfile", str(path)], cwd=workdir,
                          capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-2000:]
    assert "Traceback" not in out, out[-3000:]
    # The workflow's own message, or Snakemake's loader refusing it first (no mapping,
    # no YAML: Snakemake reads a --configfile before the workflow does).
    assert expected in out or "Config file must be given as JSON or YAML" in out \
        or "Config file is not valid JSON or YAML" in out, out
    assert not (workdir / "results").exists()


def test_the_corpus_covers_every_class_with_over_a_hundred_cases():
    classes = {c[0] for c in CASES} | {f[0] for f in FILES}
    assert len(CASES) + len(FILES) >= 100, len(CASES) + len(FILES)
    assert len(classes) >= 15, classes


@pytest.fixture
def workdir(tmp_path):
    for name in ("Snakefile", "workflow", "config", "slurm", "profiles"):
        (tmp_path / name).symlink_to(REPO / name)
    return tmp_path


def _dry_run(workdir: Path, name: str, cfg: dict) -> str:
    overlay = workdir / f"overlay-{name}.yaml"
    overlay.write_text(yaml.safe_dump(cfg))
    exe = shutil.which("snakemake") or str(Path(sys.executable).parent / "snakemake")
    proc = subprocess.run([exe, "-n", "--configfile", str(overlay)], cwd=workdir,
                          capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    return "" if proc.returncode != 0 else f"exit 0 with {overlay.name}:\n{out[-1500:]}", out


@pytest.mark.slow
def test_every_bad_config_fails_the_dry_run_naming_the_key(workdir):
    """Every case of the corpus through the workflow's own parse: the dry run fails
    before any job, naming the key, without a traceback, writing nothing."""
    from concurrent.futures import ThreadPoolExecutor

    def one(i: int) -> str:
        _, key, value, named = CASES[i]
        failed, out = _dry_run(workdir, str(i), _cfg_with(key, value))
        if failed:
            return f"case {i} ({key}={value!r}): {failed}"
        if named not in out or "Traceback" in out:
            return f"case {i} ({key}={value!r}): {out[-1500:]}"
        return ""

    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=2) as pool:
        problems = [p for p in pool.map(one, range(len(CASES))) if p]
    print(f"{len(CASES)} bad configs through the dry run in {time.monotonic() - start:.0f} s")
    assert problems == [], "\n".join(problems[:5])
    assert not (workdir / "results").exists()


@pytest.mark.parametrize("value", ["1 $(touch /tmp/pdbench-injected)", "12;id", "-5", "0",
                                   "\u00b2", "12_3", " 12"])
def test_an_adopted_job_id_that_is_not_digits_fails_the_parse(value, workdir):
    exe = shutil.which("snakemake") or str(Path(sys.executable).parent / "snakemake")
    proc = subprocess.run([exe, "-n"], cwd=workdir, capture_output=True, text=True,
                          timeout=300, env={**__import__("os").environ,
                                            "PDBENCH_ADOPT_JOB_ID": value})
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "PDBENCH_ADOPT_JOB_ID" in out, out[-2000:]
    assert "is not a Slurm job id" in out and "Traceback" not in out
    assert not Path("/tmp/pdbench-injected").exists()


SAFE_TOKEN = r"[A-Za-z0-9_./=:,@%+-]+"


def test_every_rule_shell_pastes_only_safe_tokens(workdir):
    """Injection sweep: with metacharacters in every free-text config value and an
    adopted job id in the environment, every shell command the workflow would run holds
    only plain tokens (paths and options from the layout and the grid); config values
    reach the stages through the resolved config file, never through a shell line."""
    import os
    import re
    import shlex

    evil = "a b;$(touch /tmp/pdbench-injected)`id`'\"|&><*"
    overlay = copy.deepcopy(BASE)
    overlay["site"].update(partition=evil, account=evil, qos=evil, reservation=evil)
    overlay["model"]["served_model_name"] = evil
    # router.policy is one of the router generation's policies (pdbench.routers), so only
    # its extra_args can carry the string.
    overlay["router"] = {"extra_args": [evil]}
    overlay["workload"] = {**overlay.get("workload", {}), "extra_args": [evil]}
    overlay["site"]["sbatch_extra"] = [f"--comment={evil}"]
    path = workdir / "evil.yaml"
    path.write_text(yaml.safe_dump(overlay))
    exe = shutil.which("snakemake") or str(Path(sys.executable).parent / "snakemake")
    proc = subprocess.run([exe, "-n", "-p", "--configfile", str(path)], cwd=workdir,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PDBENCH_ADOPT_JOB_ID": "4242"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    shells = re.findall(r"^Shell command: (.*)$", proc.stdout, re.M)
    assert len(shells) > 30, proc.stdout[-2000:]
    for line in shells:
        for token in shlex.split(line):
            assert token in (">", "2>") or re.fullmatch(SAFE_TOKEN, token), (token, line)
    assert any("--adopt 4242" in line for line in shells)
    assert not Path("/tmp/pdbench-injected").exists()
