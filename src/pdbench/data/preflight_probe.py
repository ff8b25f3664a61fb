"""The compute-node half of pdbench's preflight: one process on one node, inside the
container the servers will run in, checking what only that place can show.

    python preflight_probe.py SPEC.json RESULT.json

It runs with the container's interpreter, so it imports nothing of pdbench and only the
standard library (plus SGLang, to ask SGLang itself). SPEC.json says what to check
(``pdbench.preflight`` writes it); RESULT.json gets one entry per check:
``{"check", "status": "ok"|"failed"|"skipped", "detail", "fix"}``. Every check runs,
whatever the others give, so one run reports every problem.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import importlib.util
import io
import json
import os
import socket
import subprocess
import sys


class Failed(Exception):
    def __init__(self, detail: str, fix: str = "") -> None:
        super().__init__(detail)
        self.fix = fix


class Skipped(Exception):
    pass


def _distribution_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def check_shared_filesystem(spec: dict) -> str:
    path, expected = spec["token_path"], spec["token"]
    try:
        with open(path, encoding="utf-8") as fh:
            seen = fh.read().strip()
    except OSError as exc:
        raise Failed(
            f"{path}, written on the submitting host, is not readable here ({exc.strerror})",
            "put results/ on a filesystem that the submitting host and the compute nodes "
            "share (and that the container mounts)",
        ) from None
    if seen != expected:
        raise Failed(f"{path} holds other content here than the submitting host wrote",
                     "results/ must be one shared filesystem, not a node-local copy")
    back = spec["return_token_path"]
    try:
        with open(back, "w", encoding="utf-8") as fh:
            fh.write(spec["return_token"] + "\n")
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        raise Failed(f"cannot write {back} from the compute node ({exc.strerror})",
                     "the compute nodes must be able to write results/ (logs, traces)") from None
    return f"read {path} and wrote {back} on {socket.gethostname()}"


def _stand_in(module: str):
    """A server module that is not SGLang's (a test double) answers for itself."""
    mod = importlib.import_module(module)
    if not (hasattr(mod, "preflight_version") and hasattr(mod, "preflight_validate")):
        raise Failed(f"server module {module} is neither SGLang's nor provides "
                     "preflight_version/preflight_validate",
                     "set sglang.server_module to sglang.launch_server")
    return mod


def _is_sglang(module: str) -> bool:
    return module == "sglang" or module.startswith("sglang.")


def check_sglang_version(spec: dict) -> str:
    module, wanted = spec["server_module"], spec["sglang_version"]
    if _is_sglang(module):
        found = _distribution_version("sglang")
        if found is None:
            raise Failed("SGLang is not installed for " + sys.executable,
                         "use a container image with SGLang, or set site.python")
    else:
        found = _stand_in(module).preflight_version()
    if found != wanted:
        raise Failed(f"SGLang here is {found}, the config says {wanted}",
                     f"set sglang.version: {found!r}, or use an image with SGLang {wanted}")
    return f"SGLang {found} ({sys.executable})"


def check_module(spec: dict, key: str) -> str:
    module = spec[key]
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        raise Failed(f"module {module} is not importable with {sys.executable}",
                     "install it in the image, or fix the module name in the config")
    dist = spec.get(key + "_distribution")
    version = _distribution_version(dist) if dist else None
    wanted = spec.get(key + "_version")
    if wanted and version != wanted:
        raise Failed(f"{dist} here is {version}, the config says {wanted}",
                     f"use an image with {dist} {wanted}, or change the configured version")
    return f"{module}" + (f" ({dist} {version})" if version else "")


def check_client(spec: dict, spec_path: str) -> str:
    """The client's module, asked of the client's own interpreter where it has one."""
    python = spec.get("client_python")
    if not python:
        return check_module(spec, "client_module")
    try:
        done = subprocess.run(
            [python, os.path.abspath(__file__), "--check-module", spec_path, "client_module"],
            env={**os.environ, **spec.get("client_env", {})}, capture_output=True, text=True,
            timeout=300)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise Failed(f"the client's interpreter {python} did not run: {exc}",
                     "check workload.python (a path relative to the working directory, or "
                     "an interpreter in the container)") from None
    try:
        result = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        raise Failed(f"the client's interpreter {python} exited {done.returncode}: "
                     f"{(done.stderr.strip().splitlines() or ['(no output)'])[-1][:300]}",
                     "check workload.python and workload.env") from None
    if result["status"] != "ok":
        raise Failed(f"{result['detail']} (workload.python)", result["fix"])
    return result["detail"]


def _check_module_alone(spec_path: str, key: str) -> int:
    """``--check-module``: :func:`check_module` in this interpreter, one JSON line out."""
    with open(spec_path, encoding="utf-8") as fh:
        spec = json.load(fh)
    result = run(key, check_module, spec, key)
    result["detail"] = result["detail"].replace(" is not importable with ",
                                                " is not importable with the client's ")
    print(json.dumps(result))
    return 0


def _validate_with_sglang(args: list[str]) -> None:
    from sglang.srt.server_args import prepare_server_args

    prepare_server_args(args)


def check_server_args(spec: dict, server: dict) -> str:
    module, args = spec["server_module"], server["args"]
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            if _is_sglang(module):
                _validate_with_sglang(args)
            else:
                _stand_in(module).preflight_validate(args)
    except SystemExit:
        lines = [line for line in err.getvalue().splitlines() if line.strip()]
        raise Failed("the server's argument parser refused the command: "
                     + (lines[-1] if lines else "(no message)"),
                     "fix server_args for this SGLang release (pdbench render shows the "
                     "command)") from None
    except Failed:
        raise
    except Exception as exc:  # noqa: BLE001 - SGLang's checks raise many kinds
        raise Failed("the server's own checks refused the command: "
                     f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                     "fix server_args for this SGLang release") from None
    return f"accepted ({len(args)} arguments)"


def check_model(spec: dict) -> str:
    path = spec["model_path"]
    if not os.path.isdir(path):
        raise Failed(f"model path {path} is not a directory here",
                     "set model.path to a checkpoint on a filesystem the compute nodes and "
                     "the container see (site.container.mounts)")
    config_path = os.path.join(path, "config.json")
    try:
        with open(config_path, encoding="utf-8") as fh:
            model_config = json.load(fh)
    except (OSError, ValueError) as exc:
        raise Failed(f"{config_path} is not readable JSON here ({exc})",
                     "point model.path at a Hugging Face checkpoint directory") from None
    if not isinstance(model_config, dict):
        raise Failed(f"{config_path} is not a JSON object", "")
    architectures = model_config.get("architectures") or []
    wanted = spec.get("architecture")
    if wanted and wanted not in architectures:
        raise Failed(f"{config_path} lists architectures {architectures}, the config says "
                     f"{wanted}", "set model.architecture, or point model.path at the "
                     "intended checkpoint")
    tokenizer = spec.get("tokenizer")
    if tokenizer and not os.path.isdir(tokenizer) and not os.path.isfile(tokenizer):
        raise Failed(f"tokenizer {tokenizer} is not readable here",
                     "set model.tokenizer to a path the compute nodes see")
    return f"{path}: {', '.join(architectures) or 'no architectures listed'}"


def check_gpus(spec: dict) -> str:
    command, wanted = spec.get("gpu_list_command"), spec["gpus_per_node"]
    if not command:
        raise Skipped("site.preflight.gpu_list_command is null")
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise Failed(f"{' '.join(command)} did not run: {exc}",
                     "run on GPU nodes, or set site.preflight.gpu_list_command") from None
    gpus = [line for line in out.stdout.splitlines() if line.startswith("GPU ")]
    if out.returncode != 0 or len(gpus) < wanted:
        raise Failed(f"{' '.join(command)} lists {len(gpus)} GPU(s) on "
                     f"{socket.gethostname()}; site.gpus_per_node is {wanted}",
                     "set site.gpus_per_node, or choose a partition with that many GPUs")
    return f"{len(gpus)} GPU(s)"


def check_ib_devices(spec: dict) -> str:
    devices = spec.get("ib_devices") or []
    if not devices:
        raise Skipped("no InfiniBand device named in the config")
    root = spec.get("ib_sysfs", "/sys/class/infiniband")
    missing = [d for d in devices if not os.path.isdir(os.path.join(root, d))]
    if missing:
        present = sorted(os.listdir(root)) if os.path.isdir(root) else []
        raise Failed(f"InfiniBand device(s) {', '.join(missing)} not in {root} on "
                     f"{socket.gethostname()} (present: {', '.join(present) or 'none'})",
                     "fix server_args disaggregation-ib-device / site.preflight.ib_devices")
    return ", ".join(devices)


def check_ports(spec: dict) -> str:
    busy = []
    for port in spec["ports"]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            # As the servers bind (uvicorn, ZMQ): a port held only by a closing
            # connection (TIME_WAIT) is free to them.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("0.0.0.0", port))
            except OSError:
                busy.append(port)
    if busy:
        raise Failed(f"port(s) {', '.join(map(str, busy))} of the plan are in use on "
                     f"{socket.gethostname()}",
                     "stop what holds them, or change the ports section of the config")
    return f"{len(spec['ports'])} port(s) free"


def check_secrets_on_node(spec: dict) -> str:
    names = spec.get("secret_env") or []
    if not names:
        raise Skipped("site.secret_env is empty")
    missing = [name for name in names if not os.environ.get(name)]
    if missing:
        raise Failed(f"{', '.join(missing)} unset inside the job on {socket.gethostname()}",
                     "export them where Snakemake starts (srun passes the environment "
                     "with --export=ALL); values are never written to files")
    return f"{len(names)} set (values not shown)"


def run(name: str, func, *args) -> dict:
    try:
        return {"check": name, "status": "ok", "detail": func(*args), "fix": ""}
    except Skipped as exc:
        return {"check": name, "status": "skipped", "detail": str(exc), "fix": ""}
    except Failed as exc:
        return {"check": name, "status": "failed", "detail": str(exc), "fix": exc.fix}
    except Exception as exc:  # noqa: BLE001 - a check that breaks is a failed check
        return {"check": name, "status": "failed", "fix": "",
                "detail": f"{type(exc).__name__}: {exc}"}


def main(argv: list[str]) -> int:
    spec_path, result_path = argv
    with open(spec_path, encoding="utf-8") as fh:
        spec = json.load(fh)
    results = [
        run("shared_filesystem", check_shared_filesystem, spec),
        run("sglang_version", check_sglang_version, spec),
        run("router", check_module, spec, "router_module"),
        run("client", check_client, spec, spec_path),
        *(run(f"server_args:{s['name']}", check_server_args, spec, s) for s in spec["servers"]),
        run("model", check_model, spec),
        run("gpus", check_gpus, spec),
        run("ib_devices", check_ib_devices, spec),
        run("ports", check_ports, spec),
        run("secrets_on_node", check_secrets_on_node, spec),
    ]
    doc = {"host": socket.gethostname(), "python": sys.executable, "checks": results}
    tmp = result_path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=2)
    os.replace(tmp, result_path)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--check-module"]:
        sys.exit(_check_module_alone(*sys.argv[2:4]))
    sys.exit(main(sys.argv[1:]))
