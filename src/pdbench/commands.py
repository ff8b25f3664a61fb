"""Every command pdbench runs, as argument lists; the one place they become text.

Commands are built as ``list[str]`` (an argv) and stay lists until they are written
into a script or a provenance file. Quoting happens once, where text is made:
:func:`render_shell` (``shlex.join``) for a command line and :func:`shlex.quote` for an
exported value in :func:`node_launcher_script`. Nothing here runs anything.

Server commands (:func:`server_argvs`) carry the options derived from the grid point
and node plan first, then ``server_args`` (common merged with the role's) in config
order, spelled for the configured SGLang release by :mod:`pdbench.dialects`, then the
EPLB options of the point.

Secrets. ``site.secret_env`` names variables (e.g. ``HF_TOKEN``) whose values must
never appear in a rendered script, command or JSON file. They pass by name: ``srun
--export=ALL`` gives each task the environment of the process that runs ``srun``; a
pyxis container starts with the task's environment, and ``apptainer exec`` passes the
host environment into the container (pdbench never adds ``--cleanenv``). The launcher
script only checks that each named variable is set, without printing it.
:func:`missing_secrets` is the same check for the submitting side.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from .grid import Point, decode_server_args, prefill_server_args
from .dialects import ROOM, Dialect, client_dialect_for, dialect_for, server_dp_rule
from .errors import ConfigError
from .fillsize import prompts_to_fill
from .routers import router_dialect
from .layout import PointPaths, ResultsPaths, node_log_name, node_versions_name
from .topology import NodePlan

# Where the servers' fallback directories go under a point's shared directory.

# Options the EPLB mode of a point sets; a server_args value for them would be rendered
# twice, so the EPLB value replaces it.
_EPLB_OVERRIDES = ("eplb-algorithm", "eplb-rebalance-num-iterations",
                   "eplb-rebalance-layers-per-chunk",
                   "eplb-min-rebalancing-utilization-threshold", "ep-num-redundant-experts")

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def render_shell(argv: Sequence[str]) -> str:
    """The single place an argv becomes a shell command line."""
    return shlex.join([str(a) for a in argv])


# --------------------------------------------------------------------------------------
# Servers


def server_argvs(
    cfg: Mapping,
    point: Point,
    plan: NodePlan,
    server_name: str,
    *,
    expert_location: str | os.PathLike | None = None,
    dialect: Dialect | None = None,
) -> list[list[str]]:
    """One argv per node of server ``server_name`` (``"prefill-1"``, ``"decode"``).

    Index = node rank. Order of options: model, role, host/port, bootstrap port
    (prefill only; decode keeps SGLang's default, which it does not bind), distributed
    init, node rank, parallel sizes (DP attention as the release spells it), then
    ``server_args`` in config order, then EPLB.

    EPLB applies to the decode server, the one being measured (as in the runbook,
    whose prefill commands carry no expert location; ``eplb.static.prefill`` gives static
    points' prefill servers the same location): ``none`` adds nothing, or on the
    point that records for static EPLB (``point.records_experts``) the recorder's
    ``--expert-distribution-recorder-mode stat --expert-distribution-recorder-buffer-size
    -1``; ``online`` adds ``--enable-eplb --eplb-algorithm A
    --eplb-rebalance-num-iterations N`` and the optional knobs of ``eplb.online``;
    ``static`` adds ``--init-expert-location PATH``: ``expert_location`` (the recorded
    file, :func:`static_expert_location`) or ``eplb.static.init_expert_location``. Both
    add ``--ep-num-redundant-experts`` when ``eplb.redundant_experts`` is set.
    """
    dialect = dialect or dialect_for(cfg)
    try:
        server = plan.server(server_name)
    except KeyError as exc:
        raise ValueError(str(exc)) from None
    role = server.role

    eplb = _eplb_args(cfg, point, role, expert_location, dialect)
    overridden = {name for name in _EPLB_OVERRIDES if f"--{name}" in eplb}
    options: list[str] = []
    merged = prefill_server_args(cfg) if role == "prefill" else decode_server_args(cfg)
    for name, value in merged.items():
        if name in overridden:
            continue
        section = role if name in cfg["server_args"][role] else "common"
        options += dialect.option_args(name, value, key=f"server_args.{section}.{name}")

    model = cfg["model"]
    head = [
        cfg["site"]["python"],
        "-m",
        cfg["sglang"]["server_module"],
        "--model-path",
        str(model["path"]),
    ]
    if model.get("served_model_name"):
        head += ["--served-model-name", str(model["served_model_name"])]
    head += ["--disaggregation-mode", role]

    argvs = []
    for node in server.nodes:
        argv = [*head, "--host", "0.0.0.0", "--port", str(node.http_port)]
        if role == "prefill":
            argv += ["--disaggregation-bootstrap-port", str(server.bootstrap_port)]
        argv += [
            "--dist-init-addr",
            server.dist_init_addr,
            "--nnodes",
            str(len(server.nodes)),
            "--node-rank",
            str(node.rank),
            "--tp-size",
            str(server.tp),
            *dialect.dp_attention_args(server.dp),
            "--ep-size",
            str(server.ep),
            *options,
            *eplb,
        ]
        argvs.append(argv)
    return argvs


def _eplb_args(cfg, point: Point, role: str, expert_location, dialect: Dialect) -> list[str]:
    if role != "decode":
        if point.eplb == "static" and cfg["eplb"]["static"]["prefill"]:
            return _static_args(cfg, expert_location, dialect)
        return []
    if point.eplb == "none":
        if not point.records_experts:
            return []
        return [
            "--expert-distribution-recorder-mode",
            "stat",
            "--expert-distribution-recorder-buffer-size",
            "-1",
        ]
    eplb = cfg["eplb"]
    if point.eplb == "online":
        online = eplb["online"]
        knobs = {
            "enable-eplb": True,
            "eplb-algorithm": online["algorithm"],
            "eplb-rebalance-num-iterations": online["rebalance_num_iterations"],
            "eplb-rebalance-layers-per-chunk": online["rebalance_layers_per_chunk"],
            "eplb-min-rebalancing-utilization-threshold":
                online["min_rebalancing_utilization_threshold"],
            "ep-num-redundant-experts": eplb["redundant_experts"] or None,
        }
        keys = {"enable-eplb": "grid.eplb", "ep-num-redundant-experts": "eplb.redundant_experts"}
        return [arg for name, value in knobs.items()
                for arg in dialect.option_args(
                    name, value,
                    key=keys.get(name, "eplb.online." + name.removeprefix("eplb-")
                                 .replace("-", "_")))]
    if point.eplb != "static":
        raise ConfigError(f"config key grid.eplb: unknown EPLB mode {point.eplb!r}")
    return _static_args(cfg, expert_location, dialect)


def _static_args(cfg, expert_location, dialect: Dialect) -> list[str]:
    eplb = cfg["eplb"]
    location = expert_location or eplb["static"]["init_expert_location"]
    if not location:
        raise ConfigError(
            "config key eplb.static.init_expert_location: static EPLB needs a recorded "
            "expert distribution; set it, or let a 'none' point of the grid record it"
        )
    return ["--init-expert-location", os.fspath(location),
            *dialect.option_args("ep-num-redundant-experts", eplb["redundant_experts"] or None,
                                 key="eplb.redundant_experts")]


def static_expert_location(cfg: Mapping, results: ResultsPaths, point: Point) -> Path | None:
    """The file a static point's decode starts from: ``eplb.static.init_expert_location``
    if given, else the recording pass's dump of the point's EP size (absolute, as the
    servers see the shared results tree); None for other points."""
    if point.eplb != "static":
        return None
    supplied = cfg["eplb"]["static"]["init_expert_location"]
    if supplied:
        return Path(supplied)
    return results.experiment(point.experiment).expert_distribution.absolute()


def server_env(
    cfg: Mapping, role: str, *, shared_dir: str | os.PathLike | None = None
) -> dict[str, str]:
    """Environment of a server's processes: ``site.env``, ``env.common``, ``env.<role>``.

    Later sources win; values become strings (``true``/``false`` for booleans). With
    ``shared_dir`` (the point's directory on the shared filesystem), the profiler's and
    the expert-distribution recorder's fallback directories point under it
    (``SGLANG_TORCH_PROFILER_DIR``, ``SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR``); these
    two win over the config. Names in ``site.secret_env`` may not be given values here.
    """
    if role not in ("prefill", "decode"):
        raise ValueError(f"role must be 'prefill' or 'decode', not {role!r}")
    env = _config_env(cfg, (("site.env", cfg["site"].get("env", {})),
                            ("env.common", cfg["env"]["common"]),
                            (f"env.{role}", cfg["env"][role])))
    cache = cfg["site"].get("kernel_cache_dir")
    if cache:
        # The runbook's launcher exports these per role; compiled kernels then survive
        # the container and are shared by every point and run.
        base = Path(os.path.abspath(cache)) / role  # relative: to the working directory
        env["SGL_DG_CACHE_DIR"] = str(base / "deep_gemm")
        env["FLASHINFER_WORKSPACE_BASE"] = str(base / "flashinfer")
    if shared_dir is not None:
        base = Path(shared_dir)
        point = PointPaths(base)
        env["SGLANG_TORCH_PROFILER_DIR"] = str(point.profiler_dir)
        env["SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR"] = str(point.expert_distribution_dir)
    return env


# Environment a server gets from the workflow itself; the config may not set these.
WORKFLOW_ENV = frozenset({"SGL_DG_CACHE_DIR", "FLASHINFER_WORKSPACE_BASE",
                          "SGLANG_TORCH_PROFILER_DIR", "SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR"})


def _env_value(value: Any, key: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return str(value)
    raise ConfigError(f"config key {key}: {value!r} is not a string, number or boolean")


def missing_secrets(cfg: Mapping, environ: Mapping[str, str] | None = None) -> list[str]:
    """Names in ``site.secret_env`` that are unset or empty in ``environ`` (os.environ)."""
    environ = os.environ if environ is None else environ
    return [name for name in cfg["site"].get("secret_env", []) if not environ.get(name)]


# Packages whose versions a launched Python reports (pdbench.provenance reads them back).
VERSIONS_PROBE_PACKAGES = (
    "sglang", "sglang-router", "smg", "sgl-kernel", "torch", "flashinfer-python", "transformers",
    "mooncake-transfer-engine", "nixl", "deep-ep",
)
VERSIONS_PROBE = (
    "import importlib.metadata as m, json, platform\n"
    "def v(n):\n"
    "    try:\n"
    "        return m.version(n)\n"
    "    except Exception:\n"
    "        return None\n"
    f"names = {list(VERSIONS_PROBE_PACKAGES)!r}\n"
    "print(json.dumps({'python': platform.python_version(), 'packages': {n: v(n) for n in names}}))"
)


def _is_python(program: str) -> bool:
    return re.fullmatch(r"python[0-9.]*", Path(program).name) is not None


def node_launcher_script(
    argvs: Sequence[Sequence[str]],
    env: Mapping[str, str],
    *,
    log_dir: str | os.PathLike | None = None,
    role_name: str,
    node_names: Sequence[str] | None = None,
    required_env: Sequence[str] = (),
) -> str:
    """A bash script that one ``srun`` runs on every node of a server (one task per node).

    It exports ``env``, checks that every variable in ``required_env`` (the secrets) is
    set, picks the command of its node by ``$SLURM_NODEID`` and ``exec``s it. Every
    node's command appears literally in the script. With ``node_names`` (node rank ->
    Slurm node name) a task whose ``$SLURMD_NODENAME`` differs from the planned node
    stops with an error instead of starting the wrong rank. With ``log_dir`` each
    node's output goes to ``log_dir/<role_name>_node_rank_<rank>.log``, else to the
    task's stdout/stderr.
    """
    if not argvs:
        raise ValueError("no node commands")
    if node_names is not None and len(node_names) != len(argvs):
        raise ValueError(f"{len(argvs)} node commands but {len(node_names)} node names")
    for name in [*env, *required_env]:
        if not _ENV_NAME.match(name):
            raise ConfigError(f"environment variable name {name!r} is not a valid name")
    q = shlex.quote
    lines = [
        "#!/usr/bin/env bash",
        f"# pdbench node launcher for {_comment(role_name)}: {len(argvs)} node(s), one srun "
        "task per node; the node's command is chosen by SLURM_NODEID.",
        "set -euo pipefail",
        "",
    ]
    lines += [f"export {name}={q(str(value))}" for name, value in env.items()]
    if env:
        lines.append("")
    for name in required_env:
        lines.append(
            f'if [ -z "${{{name}:-}}" ]; then printf \'pdbench: %s: environment variable '
            f"%s is not set (it is passed by name, never written here)\\n' {q(role_name)} "
            f"{q(name)} >&2; exit 3; fi"
        )
    # PDBENCH_NODE_RANK: the local launcher's tasks (site.launcher: local).
    lines += ['node_id="${PDBENCH_NODE_RANK:-${SLURM_NODEID:-}}"', 'case "$node_id" in']
    for rank, argv in enumerate(argvs):
        lines.append(f"  {rank})")
        if node_names is not None:
            lines.append(
                f'    if [ -n "${{SLURMD_NODENAME:-}}" ] && [ "$SLURMD_NODENAME" != '
                f"{q(node_names[rank])} ]; then printf 'pdbench: %s: node rank %s is planned "
                f"on %s but runs on %s\\n' {q(role_name)} {rank} {q(node_names[rank])} "
                '"$SLURMD_NODENAME" >&2; exit 4; fi'
            )
        command = render_shell(argv)
        if log_dir is not None:
            log = Path(log_dir) / node_log_name(role_name, rank)
            lines += [
                f"    mkdir -p {q(str(log_dir))}",
                f"    printf 'pdbench: %s node rank %s on %s, log %s\\n' {q(role_name)} {rank} "
                f'"$(hostname)" {q(str(log))} >&2',
            ]
            if rank == 0 and _is_python(argv[0]):
                # The versions this interpreter (in the container, on the node) has: the
                # provenance of what ran, read from where it ran. Never fatal.
                versions = Path(log_dir) / node_versions_name(role_name, rank)
                lines.append(f"    {q(argv[0])} -c {q(VERSIONS_PROBE)} > {q(str(versions))} "
                             "2>/dev/null || true")
            lines.append(f"    exec {command} > {q(str(log))} 2>&1")
        else:
            lines.append(f"    exec {command}")
        lines.append("    ;;")
    lines += [
        "  *)",
        f"    printf 'pdbench: %s: no command for SLURM_NODEID=%s (this server has "
        f"{len(argvs)} node(s), ids 0-{len(argvs) - 1})\\n' {q(role_name)} "
        '"${node_id:-<unset>}" >&2',
        "    exit 2",
        "    ;;",
        "esac",
        "",
    ]
    return "\n".join(lines)


def _comment(text: str) -> str:
    return " ".join(str(text).split()) or "?"


def srun_argv(
    cfg: Mapping,
    *,
    job_id: int | str,
    nodes: Sequence[str],
    script_path: str | os.PathLike,
    step_name: str,
) -> list[str]:
    """``srun`` that runs ``bash script_path`` once on each of ``nodes`` inside job ``job_id``.

    The container is added here and only here (``site.container``): pyxis options go
    to ``srun``; apptainer wraps the command (``apptainer exec --nv --bind … IMAGE``);
    ``none`` runs it directly. ``site.container.extra_args`` go to the container
    options (``srun`` for pyxis, ``apptainer exec`` for apptainer). The script must be
    on a path that the container sees (a mounted shared directory).
    """
    nodes = list(nodes)
    if not nodes:
        raise ValueError("srun_argv: no nodes")
    n = str(len(nodes))
    argv = [
        "srun",
        "--jobid",
        str(job_id),
        "--overlap",
        "--nodes",
        n,
        "--ntasks",
        n,
        "--ntasks-per-node",
        "1",
        "--nodelist",
        ",".join(nodes),
        "--job-name",
        step_name,
        "--kill-on-bad-exit=1",
        "--export=ALL",
    ]
    options, task = container_task(cfg, script_path)
    return [*argv, *options, *task]


def container_task(cfg: Mapping, script_path: str | os.PathLike) -> tuple[list[str], list[str]]:
    """How one task runs ``bash script_path`` in ``site.container``: the ``srun`` options
    (pyxis, or ``--chdir`` without a container) and the task's argv (apptainer wraps it).
    """
    container = cfg["site"]["container"]
    runtime = container["runtime"]
    image, mounts, workdir = container["image"], container_mounts(cfg), container["workdir"]
    if runtime != "none" and container.get("mount_workdir", True) and not workdir:
        workdir = os.getcwd()
    extra = list(container.get("extra_args", []))
    script = ["bash", os.fspath(script_path)]
    if runtime in ("pyxis", "apptainer") and not image:
        raise ConfigError(f"config key site.container.image: required for runtime {runtime!r}")
    if runtime == "pyxis":
        options = ["--container-image", image]
        if mounts:
            options += ["--container-mounts", ",".join(mounts)]
        if workdir:
            options += ["--container-workdir", workdir]
        return [*options, "--no-container-mount-home", *extra], script
    if runtime == "apptainer":
        wrap = ["apptainer", "exec", "--nv"]
        for mount in mounts:
            wrap += ["--bind", mount]
        if workdir:
            wrap += ["--pwd", workdir]
        return [], [*wrap, *extra, image, *script]
    if runtime == "none":
        if extra:
            raise ConfigError(
                "config key site.container.extra_args: container options given but "
                "site.container.runtime is 'none'"
            )
        return (["--chdir", workdir] if workdir else []), script
    raise ConfigError(f"config key site.container.runtime: unknown runtime {runtime!r}")


def local_task_argv(cfg: Mapping, script_path: str | os.PathLike) -> list[str]:
    """The task's argv of a local step (``site.launcher: local``): no ``srun`` to carry
    pyxis options, so the container is apptainer or none."""
    options, task = container_task(cfg, script_path)
    if cfg["site"]["container"]["runtime"] == "pyxis":
        raise ConfigError("config key site.container.runtime: pyxis starts containers "
                          "through srun; site.launcher: local takes apptainer or none")
    if options:  # --chdir DIR without a container
        return ["env", "-C", options[1], *task]
    return task


def container_mounts(cfg: Mapping, workdir: str | os.PathLike | None = None) -> list[str]:
    """``site.container.mounts``, with the working directory (``workdir`` or the current
    one) mounted at its own path first when ``site.container.mount_workdir``: results,
    launcher scripts and relative paths of the config live there."""
    container = cfg["site"]["container"]
    mounts = list(container["mounts"])
    if container["runtime"] != "none" and container.get("mount_workdir", True):
        here = os.fspath(workdir or os.getcwd())
        if not any(m.split(":")[0] == here for m in mounts):
            mounts.insert(0, f"{here}:{here}")
    return mounts


# --------------------------------------------------------------------------------------
# Router and benchmark client


def router_argv(cfg: Mapping, plan: NodePlan) -> list[str]:
    """The PD router on the router node, spelled for ``router.implementation`` and
    ``router.version`` (:mod:`pdbench.routers`; docs/sglang-formats.md, "Router").

    Each prefill group is ``--prefill URL BOOTSTRAP_PORT`` (explicit, so a non-default
    bootstrap port reaches the decode side); the decode server is ``--decode URL``.
    ``sglang.router_module`` overrides the generation's module.
    """
    router = cfg["router"]
    gen = router_dialect(cfg)
    module = cfg["sglang"].get("router_module") or gen.module
    argv = [cfg["site"]["python"], "-m", module, gen.pd_flag]
    for server in plan.prefill:
        argv += [gen.prefill_flag, server.url, str(server.bootstrap_port)]
    argv += [gen.decode_flag, plan.decode.url, gen.host_flag, "0.0.0.0", gen.port_flag,
             str(plan.router_port)]
    if plan.shared_host:
        # The router's metrics port (default 29000) would collide between routers that
        # share one host; the port plan leaves router_port + 1 free for it.
        argv += [gen.metrics_port_flag, str(plan.router_port + 1)]
    if router["mini_lb"]:
        argv.append("--mini-lb")
    if router["policy"]:
        argv += ["--policy", str(router["policy"])]
    return [*argv, *router["extra_args"]]


# bench_serving raises its soft open-file limit to 65535 (``set_ulimit``, every release
# since 0.4) and holds one connection per request in flight; without --max-concurrency
# every prompt is in flight at once. The rest of the 65535 is left for the process.
CLIENT_MAX_CONNECTIONS = 60000


def client_prompts(cfg: Mapping, point: Point) -> int:
    """Prompts (bench_serving) or batch size (bench_one_batch_server) the client sends:
    ``workload.num_prompts`` / ``workload.batch_size``, else twice the decode target, or
    more where decode picks DP ranks at random (``bootstrap_room % dp``): then as many as
    make every rank receive its fill threshold with probability
    ``fill.rank_fill_probability`` (:func:`fill_prompts`)."""
    w = cfg["workload"]
    key = "num_prompts" if w["client"] == "bench_serving" else "batch_size"
    return w[key] or max(2 * point.target_global_batch, fill_prompts(cfg, point))


def fill_threshold(cfg: Mapping, point: Point) -> int:
    """Requests per decode rank at which the fill counts the rank as full."""
    return max(1, math.ceil(point.target_batch_per_rank * cfg["fill"]["target_fraction"]))


def fill_prompts(cfg: Mapping, point: Point) -> int:
    """The fewest requests that bring every decode DP rank to its fill threshold: DP ranks
    x threshold where the release balances them, and where it routes by the random
    bootstrap room the fewest that do so with probability ``fill.rank_fill_probability``."""
    rule, _method = server_dp_rule(cfg, "decode")
    threshold = fill_threshold(cfg, point)
    if rule != ROOM or point.decode_dp <= 1:
        return point.decode_dp * threshold
    return prompts_to_fill(point.decode_dp, threshold, cfg["fill"]["rank_fill_probability"])


def client_concurrency(cfg: Mapping, point: Point) -> int:
    """Requests bench_serving keeps in flight: ``workload.max_concurrency``, else all
    prompts up to :data:`CLIENT_MAX_CONNECTIONS`."""
    return cfg["workload"]["max_concurrency"] or min(client_prompts(cfg, point),
                                                     CLIENT_MAX_CONNECTIONS)


def client_python(cfg: Mapping) -> str:
    """The benchmark client's interpreter: ``workload.python``, else ``site.python``."""
    return cfg["workload"].get("python") or cfg["site"]["python"]


# The bench_serving datasets whose prompts are random token ids (--tokenize-prompt).
TOKENIZED_DATASETS = ("random", "random-ids")


def client_env(cfg: Mapping) -> dict[str, str]:
    """Environment of the benchmark client: ``site.env``, then ``workload.env`` (the
    servers' ``env.*`` sections are theirs). Names in ``site.secret_env`` may not be given
    values here."""
    return _config_env(cfg, (("site.env", cfg["site"].get("env", {})),
                             ("workload.env", cfg["workload"].get("env", {}))))


def _config_env(cfg: Mapping, sections) -> dict[str, str]:
    """The variables of config ``sections`` (``(key, mapping)``, later ones win) as
    strings; a name listed in ``site.secret_env`` may not be given a value. A null value
    removes what an earlier section (or config file) set."""
    secrets = set(cfg["site"].get("secret_env", []))
    env: dict[str, str] = {}
    for key, values in sections:
        for name, value in values.items():
            if name in secrets:
                raise ConfigError(
                    f"config key {key}.{name}: {name} is listed in site.secret_env; its "
                    "value must come from the submitting environment, not the config"
                )
            if value is None:
                env.pop(name, None)
                continue
            env[name] = _env_value(value, f"{key}.{name}")
    return env


def client_argv(
    cfg: Mapping,
    point: Point,
    plan: NodePlan,
    *,
    output_file: str | os.PathLike,
    tokenizer: str | os.PathLike | None = None,
    dialect: Dialect | None = None,
) -> list[str]:
    """The benchmark client against the router (``workload.client``; docs/sglang-formats.md).

    ``bench_serving``: ``--num-prompts`` is ``workload.num_prompts`` or twice the decode
    target batch; the tokenizer is ``tokenizer``, else ``model.tokenizer``, else
    ``model.path``. ``bench_one_batch_server``: ``--batch-size`` is
    ``workload.batch_size`` or twice the target; it reads its tokenizer from the server
    (pass one with ``workload.extra_args`` if needed). The interpreter is
    :func:`client_python`; the module and flags are those of the client's release
    (:func:`pdbench.dialects.client_dialect_for`: ``sglang.bench_serving`` or, from
    0.5.15, ``sglang.benchmark.serving``).
    """
    dialect = dialect or client_dialect_for(cfg)
    w = cfg["workload"]
    python = client_python(cfg)
    output = os.fspath(output_file)
    if w["client"] == "bench_serving":
        num_prompts = client_prompts(cfg, point)
        tok = tokenizer or cfg["model"].get("tokenizer") or cfg["model"]["path"]
        argv = [
            python,
            "-m",
            dialect.bench_serving_module,
            "--backend",
            "sglang",
            "--base-url",
            plan.router_url,
            "--dataset-name",
            w["dataset"],
            "--random-input-len",
            str(w["input_len"]),
            "--random-output-len",
            str(w["output_len"]),
            "--random-range-ratio",
            str(w["random_range_ratio"]),
            "--num-prompts",
            str(num_prompts),
            "--request-rate",
            str(w["request_rate"]),
        ]
        argv += ["--max-concurrency", str(client_concurrency(cfg, point))]
        if dialect.bench_serving_tokenize_prompt and w["dataset"] in TOKENIZED_DATASETS:
            # Token ids, not text: every request has exactly input_len input tokens. As
            # text the server tokenizes the decoded random ids again, and the count
            # drifts (SGLang 0.5.17 on an H100 got up to 316 for 128, past the context).
            argv.append("--tokenize-prompt")
        # No warm-up request: the fill sets /slow_down before the client starts, and a
        # warm-up request (up to 32 tokens) would then take 32 sleeps before the run.
        argv += ["--warmup-requests", "0"]
        argv += ["--tokenizer", os.fspath(tok), "--output-file", output]
    elif w["client"] == "bench_one_batch_server":
        batch_size = client_prompts(cfg, point)
        argv = [
            python,
            "-m",
            dialect.bench_one_batch_server_module,
            "--model-path",
            str(cfg["model"]["path"]),
            "--base-url",
            plan.router_url,
            "--batch-size",
            str(batch_size),
            "--input-len",
            str(w["input_len"]),
            "--output-len",
            str(w["output_len"]),
            "--skip-warmup",
            "--result-filename",
            output,
        ]
        argv += one_batch_server_dataset_args(w, dialect)
        return [*argv, *w["extra_args"]]
    else:
        raise ConfigError(f"config key workload.client: unknown client {w['client']!r}")
    if w["dataset_path"]:
        argv += ["--dataset-path", str(w["dataset_path"])]
    return [*argv, *w["extra_args"]]


def one_batch_server_dataset_args(workload: Mapping, dialect: Dialect) -> list[str]:
    """``--dataset-name``/``--dataset-path`` as the release's bench_one_batch_server knows
    them (:attr:`Dialect.one_batch_server_datasets`); a dataset it cannot take is a
    config error, never swapped for another (it changes the prompts)."""
    choices = dialect.one_batch_server_datasets
    args: list[str] = []
    if choices is not None:
        if workload["dataset"] not in choices:
            raise ConfigError(
                f"config key workload.dataset: bench_one_batch_server of SGLang "
                f"{dialect.version} has no dataset {workload['dataset']!r} (it knows "
                f"{', '.join(sorted(choices))}); choose one of those or another sglang.version")
        args += ["--dataset-name", workload["dataset"]]
    elif workload["dataset"] != "random-ids":
        raise ConfigError(
            f"config key workload.dataset: bench_one_batch_server of SGLang {dialect.version} "
            "has no --dataset-name (it sends random token ids of its own); leave "
            "workload.dataset at random-ids")
    if workload["dataset_path"]:
        if not dialect.one_batch_server_dataset_path:
            raise ConfigError(
                f"config key workload.dataset_path: bench_one_batch_server of SGLang "
                f"{dialect.version} has no --dataset-path (0.5.2 added it); remove it")
        args += ["--dataset-path", str(workload["dataset_path"])]
    return args


# The client is started while the servers load and waits, its imports done, for the
# fill to let it go: importing the client costs seconds (torch, transformers) that would
# otherwise lie between "servers ready" and the first request. The start signal is
# SIGUSR1 to the client's Slurm step (``scancel --signal=USR1 JOB.STEP``), not a file on
# the shared filesystem, whose negative look-ups NFS may cache for up to a minute.
# SIGUSR1 is blocked before anything else, so a signal sent at any time after the
# "armed" line stays pending until ``sigwait`` takes it; later ones are ignored, so the
# sender may repeat it until the "released" line shows. The module then runs as
# ``python -m`` would run it (its imports are already in ``sys.modules``).
CLIENT_GATE_ARMED = "pdbench-client-gate: armed"
CLIENT_GATE_WAITING = "waiting for SIGUSR1"  # the client is imported and held
CLIENT_GATE_RELEASED = "pdbench-client-gate: released"
_CLIENT_GATE = f"""\
import runpy, signal, sys, time, warnings
signal.pthread_sigmask(signal.SIG_BLOCK, {{signal.SIGUSR1}})
print("{CLIENT_GATE_ARMED}; importing " + sys.argv[1], flush=True)
t0 = time.monotonic()
__import__(sys.argv[1])
print("pdbench-client-gate: imported in %.1f s; {CLIENT_GATE_WAITING}" % (time.monotonic() - t0),
      flush=True)
signal.sigwait({{signal.SIGUSR1}})
signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # a repeated start signal is harmless
signal.pthread_sigmask(signal.SIG_UNBLOCK, {{signal.SIGUSR1}})
print("{CLIENT_GATE_RELEASED}", flush=True)
sys.argv = sys.argv[1:]
warnings.filterwarnings("ignore", message=".*found in sys.modules", category=RuntimeWarning)
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


def gated_client_argv(argv: Sequence[str]) -> list[str]:
    """``python -m MODULE ARGS`` as a client that imports, then waits for SIGUSR1."""
    if len(argv) < 3 or argv[1] != "-m":
        raise ValueError(f"not a `python -m MODULE` command: {render_shell(argv)}")
    return [argv[0], "-c", _CLIENT_GATE, *argv[2:]]


# --------------------------------------------------------------------------------------
# Control calls


class ControlRequest(NamedTuple):
    """One HTTP call to a server: method, full URL and JSON body (None = no body)."""

    method: str
    url: str
    body: dict | None


_CONTROL_PATHS = {
    "slow_down": ("POST", "/slow_down"),
    "start_profile": ("POST", "/start_profile"),
    "server_info": ("GET", None),  # per dialect
    # The expert-distribution recorder (SGLang's http_server, every release here): no body.
    "start_expert_distribution_record": ("POST", "/start_expert_distribution_record"),
    "dump_expert_distribution_record": ("POST", "/dump_expert_distribution_record"),
    # Between points on shared servers (every release here: http_server.py's
    # /flush_cache, GET or POST, no body): 200 once every scheduler flushed, 400 while a
    # request runs or waits.
    "flush_cache": ("POST", "/flush_cache"),
}

_START_PROFILE_ORDER = (
    "output_dir",
    "start_step",
    "num_steps",
    "activities",
    "profile_by_stage",
    "with_stack",
    "record_shapes",
    "profile_id",
    "merge_profiles",
    "profile_prefix",
    "profile_stages",
    "detailed_annotations",
)

CONTROL_KINDS = tuple(_CONTROL_PATHS)


def control_request(
    kind: str, url: str, *, dialect: Dialect | None = None, **kw: Any
) -> ControlRequest:
    """A control call to a server's node 0 (``url`` = its base URL) as data.

    - ``slow_down``: ``forward_sleep_time=`` seconds, or None to clear (the key is
      required by SGLang and always sent).
    - ``start_profile`` (needs ``dialect``): ``output_dir, num_steps, activities,
      with_stack, record_shapes, profile_id``, and ``start_step, profile_by_stage,
      merge_profiles, profile_prefix, profile_stages, detailed_annotations``. Only
      the keys the release reads are sent and None values are left out; check
      ``body`` to see whether e.g. ``profile_id`` went out (from 0.5.15). ``num_steps``
      is the number of batches to capture: releases before 0.5.16 capture N-1 batches
      for ``num_steps=N`` when neither ``start_step`` nor ``profile_by_stage`` goes out,
      so N+1 is sent to them.
    - ``server_info`` (path per release): GET.
    - ``start_expert_distribution_record``, ``dump_expert_distribution_record``: POST,
      no body (the recording pass of static EPLB).
    - ``flush_cache``: POST, no body (the reset between points on shared servers).

    Only the calls a stage makes are here; the others of SGLang's control API are in
    docs/sglang-formats.md.
    """
    if kind not in _CONTROL_PATHS:
        raise ValueError(f"unknown control call {kind!r} (known: {', '.join(CONTROL_KINDS)})")
    method, path = _CONTROL_PATHS[kind]
    body: dict | None = None
    if kind == "slow_down":
        if set(kw) != {"forward_sleep_time"}:
            raise ValueError("slow_down takes exactly forward_sleep_time= (seconds or None)")
        seconds = kw["forward_sleep_time"]
        if seconds is not None and (
            isinstance(seconds, bool) or not isinstance(seconds, (int, float))
        ):
            raise ValueError(f"forward_sleep_time must be a number or None, not {seconds!r}")
        body = {"forward_sleep_time": seconds}
    elif kind == "start_profile":
        if dialect is None:
            raise ValueError("start_profile needs dialect= (pdbench.dialects.dialect_for(cfg))")
        unknown = set(kw) - set(_START_PROFILE_ORDER)
        if unknown:
            raise ValueError(f"start_profile: unknown key(s) {', '.join(sorted(unknown))}")
        values = dict(kw)
        body = {
            k: values[k]
            for k in _START_PROFILE_ORDER
            if values.get(k) is not None and k in dialect.start_profile_keys
        }
        # Only an immediate capture counts from the request's forward (and captures one
        # batch less before 0.5.16); with start_step or by stage, num_steps is exact.
        if "num_steps" in body and not body.get("start_step") and not body.get(
            "profile_by_stage"
        ):
            body["num_steps"] = dialect.start_profile_num_steps(int(body["num_steps"]))
        if "activities" in body:
            body["activities"] = list(body["activities"])
        if "profile_stages" in body:
            body["profile_stages"] = list(body["profile_stages"])
        if "output_dir" in body:
            body["output_dir"] = os.fspath(body["output_dir"])
    elif kw:
        raise ValueError(f"{kind} takes no arguments, got {', '.join(sorted(kw))}")
    if kind == "server_info":
        if dialect is None:
            raise ValueError("server_info needs dialect= (the path depends on the release)")
        path = dialect.server_info_path
    return ControlRequest(method, url.rstrip("/") + path, body)


def curl_argv(request: ControlRequest | Sequence, *, timeout_s: float = 60) -> list[str]:
    """The ``curl`` command equivalent to ``request`` (for the rendered-commands file)."""
    method, url, body = request
    argv = ["curl", "--silent", "--show-error", "--fail", "--max-time", f"{timeout_s:g}"]
    argv += ["-X", method, url]
    if body is not None:
        argv += ["-H", "Content-Type: application/json", "--data", json.dumps(body)]
    return argv


__all__ = [
    "CONTROL_KINDS",
    "ControlRequest",
    "client_argv",
    "client_env",
    "client_python",
    "control_request",
    "curl_argv",
    "missing_secrets",
    "node_launcher_script",
    "render_shell",
    "router_argv",
    "server_argvs",
    "static_expert_location",
    "server_env",
    "srun_argv",
]
