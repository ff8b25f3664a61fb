"""Check rendered commands with SGLang's own argument parsers, offline.

Two halves in one file:

- Run as a script with the SGLang virtualenv's Python (``scripts/setup-sglang-venv``),
  it reads a JSON list of argvs on stdin, parses each with the parser of the module it
  names, and writes a JSON list of results on stdout. Nothing is launched: server
  commands go through ``ServerArgs.add_cli_args(parser); parser.parse_args(args)``
  (parsing alone resolves nothing, so it needs no GPU and no model), router commands through
  ``parse_router_args`` of ``sglang_router.launch_router`` or ``smg.launch_router``,
  benchmark clients through their
  own parsers. This half imports only the standard library and SGLang.
- Imported by the tests, :func:`check_argvs` runs that script in one subprocess for
  any number of argvs (importing SGLang costs seconds) and returns the results.

An argv is a full command (``[python, "-m", module, *args]``) or ``[module, *args]``.
A result is ``{"module", "ok", "error", "warnings", "explicit"}``: ``error`` is the
parser's message, ``warnings`` what SGLang logged or printed while parsing (e.g. a
deprecated flag), ``explicit`` the parsed values that differ from the defaults.

Validation (``validate=``): a server command is also turned into SGLang's own
``ServerArgs`` and resolved the way the release resolves it before it starts a server
(``ServerArgs.__post_init__`` up to 0.5.2x; ``resolve_once()`` + ``check_server_args()``
where the release has them), so the release's own assertions and cross-checks run, not
only its parser (``"validated"``, ``"validation_error"`` in the result). Nothing is
launched and no GPU is needed; two things stand in for the cluster, and only these:

- **the model directory**: ``--model-path`` is replaced by ``validate["model_path"]``, a
  directory holding the checkpoint's ``config.json`` (and ``hf_quant_config.json``) but
  no weights;
- **the device**: after SGLang is imported on the CPU host, ``torch.cuda`` reports the
  device of ``validate["device"]`` (name, compute capability, memory; e.g. GB200 =
  SM 10.0) and SGLang's cached device probes are cleared, so every check SGLang makes
  at resolution time sees that GPU. GPU-only kernel packages SGLang imports on the way
  (``sgl_kernel``) are importable stand-ins that raise if called.

To check another release than the one installed in the virtualenv, its wheel is
installed ``--no-deps`` into a directory of its own that goes first on ``PYTHONPATH``
(``sglang_path=``; ``scripts/setup-sglang-release``): that release's SGLang code with
the virtualenv's torch and transformers.
"""

from __future__ import annotations

import os
import sys

if (
    __name__ == "__main__"
    and sys.path
    and os.path.realpath(sys.path[0]) == os.path.dirname(os.path.realpath(__file__))
):
    # Run as a script: this directory (with the tests' modules) must not shadow modules
    # that SGLang and torch import.
    del sys.path[0]

import argparse  # noqa: E402
import contextlib  # noqa: E402
import functools  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import subprocess  # noqa: E402
from pathlib import Path  # noqa: E402

SERVER_MODULES = ("sglang.launch_server",)
ROUTER_MODULES = ("sglang_router.launch_router", "smg.launch_router")
BENCH_SERVING_MODULES = ("sglang.bench_serving", "sglang.benchmark.serving")
ONE_BATCH_MODULES = ("sglang.bench_one_batch_server", "sglang.benchmark.one_batch_server")


def default_python() -> Path:
    """The SGLang virtualenv's interpreter: ``$PDBENCH_SGLANG_PYTHON`` or the repo's."""
    env = os.environ.get("PDBENCH_SGLANG_PYTHON")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1] / ".venv-sglang" / "bin" / "python"


# Devices the validation can stand in for: what torch.cuda reports on them.
DEVICES = {
    "gb200": {"name": "NVIDIA GB200", "capability": [10, 0], "memory_mib": 189_471,
              "sm_count": 152},
    "b200": {"name": "NVIDIA B200", "capability": [10, 0], "memory_mib": 183_359,
             "sm_count": 148},
    "h200": {"name": "NVIDIA H200", "capability": [9, 0], "memory_mib": 143_771,
             "sm_count": 132},
    "h100": {"name": "NVIDIA H100 80GB HBM3", "capability": [9, 0], "memory_mib": 81_559,
             "sm_count": 132},
}


def check_argvs(argvs, python: str | os.PathLike | None = None, timeout: float = 600, *,
                validate: dict | None = None,
                sglang_path: str | os.PathLike | None = None) -> list:
    """Parse every argv with SGLang's parsers in one subprocess; one result per argv.

    ``validate``: ``{"model_path": DIR, "device": "gb200" | {...}}`` also resolves every
    server command with the release's own ``ServerArgs`` (module docstring).
    ``sglang_path``: a directory with another SGLang release, put first on the path."""
    python = Path(python) if python else default_python()
    request: object = [list(map(str, a)) for a in argvs]
    if validate is not None:
        device = validate.get("device", "gb200")
        request = {"argvs": request, "validate": {
            "model_path": str(validate["model_path"]),
            "device": DEVICES[device] if isinstance(device, str) else device,
        }}
    env = dict(os.environ)
    if sglang_path is not None:
        env["PYTHONPATH"] = os.pathsep.join(
            [str(sglang_path), *filter(None, [env.get("PYTHONPATH")])])
    proc = subprocess.run(
        [str(python), "-P", str(Path(__file__).resolve())],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"{python} {Path(__file__).name} exited {proc.returncode}:\n{proc.stderr[-4000:]}"
        )
    results = json.loads(proc.stdout)
    if len(results) != len(argvs):
        raise RuntimeError(f"expected {len(argvs)} results, got {len(results)}")
    return results


# --------------------------------------------------------------------------------------
# The script half (runs inside the SGLang virtualenv).


class _ParseError(Exception):
    pass


class _Parsed(Exception):
    def __init__(self, namespace, parser):
        super().__init__("parsed")
        self.namespace = namespace
        self.parser = parser


def _raise_instead_of_exit(self, message):
    raise _ParseError(message)


def _split(argv):
    if "-m" in argv:
        i = argv.index("-m")
        return argv[i + 1], argv[i + 2 :]
    return argv[0], argv[1:]


def _explicit(namespace, parser) -> dict:
    out = {}
    for name, value in sorted(vars(namespace).items()):
        try:
            default = parser.get_default(name)
        except Exception:  # noqa: BLE001 - any parser quirk: keep the value
            default = object()
        if value != default:
            out[name] = value
    return out


def _parse_server(args):
    from sglang.srt.server_args import ServerArgs

    parser = argparse.ArgumentParser()
    ServerArgs.add_cli_args(parser)
    return parser.parse_args(args), parser


def _parse_one_batch(args):
    from sglang.srt.server_args import ServerArgs

    try:
        from sglang.benchmark.one_batch_server import BenchArgs
    except ImportError:
        from sglang.bench_one_batch_server import BenchArgs

    parser = argparse.ArgumentParser()
    ServerArgs.add_cli_args(parser)
    BenchArgs.add_cli_args(parser)
    return parser.parse_args(args), parser


def _parse_router(args, module="sglang_router.launch_router"):
    import importlib

    launch_router = importlib.import_module(module)

    captured = {}
    original = argparse.ArgumentParser.parse_args

    def parse_args(self, a=None, namespace=None):
        ns = original(self, a, namespace)
        captured["parser"] = self
        captured["namespace"] = ns
        return ns

    argparse.ArgumentParser.parse_args = parse_args
    try:
        launch_router.parse_router_args(args)
    finally:
        argparse.ArgumentParser.parse_args = original
    return captured["namespace"], captured["parser"]


def _parse_bench_serving(args):
    try:
        from sglang.benchmark import serving as module
    except ImportError:
        from sglang import bench_serving as module

    base = module.ArgumentParser

    class Capturing(base):
        def parse_args(self, a=None, namespace=None):
            raise _Parsed(base.parse_args(self, args, namespace), self)

    module.ArgumentParser = Capturing
    try:
        module.cli_main()
    except _Parsed as done:
        return done.namespace, done.parser
    finally:
        module.ArgumentParser = base
    raise _ParseError("cli_main returned without parsing arguments")


def _check_one(argv) -> dict:
    module, args = _split(argv)
    if module in SERVER_MODULES:
        parse = _parse_server
    elif module in ROUTER_MODULES:
        parse = functools.partial(_parse_router, module=module)
    elif module in BENCH_SERVING_MODULES:
        parse = _parse_bench_serving
    elif module in ONE_BATCH_MODULES:
        parse = _parse_one_batch
    else:
        return {
            "module": module,
            "ok": False,
            "error": f"no parser known for {module}",
            "warnings": [],
            "explicit": {},
        }
    log = io.StringIO()
    handler = logging.StreamHandler(log)
    handler.setLevel(logging.WARNING)
    root = logging.getLogger()
    root.addHandler(handler)
    printed = io.StringIO()
    result = {"module": module, "ok": True, "error": None, "warnings": [], "explicit": {}}
    try:
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
            namespace, parser = parse(args)
        result["explicit"] = json.loads(json.dumps(_explicit(namespace, parser), default=str))
    except _ParseError as exc:
        result.update(ok=False, error=str(exc))
    except SystemExit as exc:
        result.update(ok=False, error=f"exit {exc.code}: {printed.getvalue().strip()[-2000:]}")
    except Exception as exc:  # noqa: BLE001 - e.g. a client module that fails to import
        result.update(ok=False, error=f"{type(exc).__name__}: {exc}")
    finally:
        root.removeHandler(handler)
    text = log.getvalue() + printed.getvalue()
    result["warnings"] = [
        line.replace("\x1b[1;33m", "").replace("\x1b[0m", "").strip()
        for line in text.splitlines()
        if line.strip()
    ]
    return result


def _install_kernel_stand_ins(roots=("sgl_kernel",)) -> None:
    """GPU-only kernel packages as importable stand-ins (tests/kernel_stand_ins.py, loaded
    by its path: run as a script, this directory is not on sys.path)."""
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.realpath(__file__)), "kernel_stand_ins.py")
    spec = importlib.util.spec_from_file_location("pdbench_kernel_stand_ins", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.install(roots)


def _import_for_validation() -> None:
    """Import what ServerArgs resolution uses while torch is still a CPU build, so
    import-time code takes its CPU paths; the device stand-in comes after."""
    import importlib

    _install_kernel_stand_ins()
    for name in ("sglang.srt.server_args", "sglang.srt.configs.model_config",
                 "sglang.srt.arg_groups.pipeline"):
        try:
            importlib.import_module(name)
        except ImportError:
            pass  # a module of another release


def _stand_in_device(device: dict) -> None:
    """From here on torch.cuda reports ``device``; SGLang's cached probes forget the CPU."""
    import types

    import torch

    memory = int(device["memory_mib"]) << 20
    major, minor = device["capability"]
    props = types.SimpleNamespace(total_memory=memory, major=major, minor=minor,
                                  name=device["name"],
                                  multi_processor_count=device.get("sm_count", 132))
    torch.cuda.is_available = lambda: True
    torch.cuda.is_initialized = lambda: False
    torch.cuda.device_count = lambda: 1
    torch.cuda.get_device_capability = lambda *a, **k: (major, minor)
    torch.cuda.get_device_name = lambda *a, **k: device["name"]
    torch.cuda.get_device_properties = lambda *a, **k: props
    torch.cuda.mem_get_info = lambda *a, **k: (memory, memory)
    torch.version.cuda = torch.version.cuda or "12.9"
    from sglang.srt.utils import common

    for name in dir(common):  # lru_cache'd probes (is_cuda, is_sm100_supported, ...)
        value = getattr(common, name)
        if callable(value) and hasattr(value, "cache_clear"):
            value.cache_clear()
    for module in list(sys.modules.values()):
        if getattr(module, "__name__", "").startswith("sglang") and hasattr(
            module, "get_nvgpu_memory_capacity"
        ):
            module.get_nvgpu_memory_capacity = lambda *a, **k: device["memory_mib"]
    platforms = sys.modules.get("sglang.srt.platforms")
    if platforms is not None and hasattr(platforms, "_current_platform"):
        platforms._current_platform = None  # resolved again, now as CUDA


def _validate_server(args: list, model_path: str) -> None:
    """Build and resolve the release's ServerArgs from ``args``; raises what SGLang raises."""
    from sglang.srt.server_args import ServerArgs

    args = list(args)
    if "--model-path" in args:
        args[args.index("--model-path") + 1] = model_path
    parser = argparse.ArgumentParser()
    ServerArgs.add_cli_args(parser)
    server_args = ServerArgs.from_cli_args(parser.parse_args(args))
    if hasattr(server_args, "resolve_once"):
        server_args.resolve_once()
    if hasattr(server_args, "check_server_args"):
        server_args.check_server_args()


def _validate_all(argvs: list, results: list, spec: dict) -> None:
    _import_for_validation()
    _stand_in_device(spec["device"])
    for argv, result in zip(argvs, results):
        module, args = _split(argv)
        if module not in SERVER_MODULES or not result["ok"]:
            continue
        printed = io.StringIO()
        try:
            with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
                _validate_server(args, spec["model_path"])
            result.update(validated=True, validation_error=None)
        except BaseException as exc:  # noqa: BLE001 - AssertionError, ValueError, SystemExit
            message = str(exc) or printed.getvalue().strip()[-500:]
            result.update(validated=False,
                          validation_error=f"{type(exc).__name__}: {message}")


def _option_table() -> dict:
    """Every option string of the release's server parser with the argument it sets
    (aliases share a dest), and whether the parser accepts unique prefixes."""
    try:
        # Releases register their own model configs with transformers; with the
        # virtualenv's newer transformers some names already exist. Only the parser is
        # read here, so a name registered twice does not matter.
        from transformers import AutoConfig

        register = AutoConfig.register
        AutoConfig.register = staticmethod(
            lambda model_type, config, exist_ok=False: register(model_type, config,
                                                                exist_ok=True))
    except ImportError:
        pass
    import sglang
    from sglang.srt.server_args import ServerArgs

    parser = argparse.ArgumentParser()
    ServerArgs.add_cli_args(parser)
    options = {}
    for action in parser._actions:  # noqa: SLF001 - argparse has no public listing
        for opt in action.option_strings:
            if opt.startswith("--"):
                options[opt[2:]] = action.dest
    options.pop("help", None)
    return {"sglang": sglang.__version__, "allow_abbrev": parser.allow_abbrev,
            "options": dict(sorted(options.items()))}


def option_table(python: str | os.PathLike | None = None, *,
                 sglang_path: str | os.PathLike | None = None, timeout: float = 600) -> dict:
    """The server option table of the release in the virtualenv (or at ``sglang_path``)."""
    python = Path(python) if python else default_python()
    env = dict(os.environ)
    if sglang_path is not None:
        env["PYTHONPATH"] = os.pathsep.join(
            [str(sglang_path), *filter(None, [env.get("PYTHONPATH")])])
    proc = subprocess.run([str(python), "-P", str(Path(__file__).resolve())],
                          input=json.dumps({"option_table": True}), capture_output=True,
                          text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{python} {Path(__file__).name} exited {proc.returncode}:\n"
                           f"{proc.stderr[-4000:]}")
    return json.loads(proc.stdout)


def main() -> int:
    request = json.load(sys.stdin)
    if isinstance(request, dict) and request.get("option_table"):
        answer = os.fdopen(os.dup(1), "w")
        os.dup2(2, 1)
        sys.stdout = sys.stderr
        json.dump(_option_table(), answer)
        answer.write("\n")
        answer.flush()
        return 0
    validate = None
    if isinstance(request, dict):
        argvs, validate = request["argvs"], request.get("validate")
    else:
        argvs = request
    # Keep stdout for the JSON answer: whatever SGLang prints goes to stderr.
    answer = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    argparse.ArgumentParser.error = _raise_instead_of_exit
    logging.getLogger().setLevel(logging.WARNING)
    results = [_check_one(argv) for argv in argvs]
    if validate:
        _validate_all(argvs, results, validate)
    try:
        import sglang

        version = getattr(sglang, "__version__", None)
    except ImportError:
        version = None
    for r in results:
        r["sglang_version"] = version
    json.dump(results, answer)
    answer.write("\n")
    answer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
