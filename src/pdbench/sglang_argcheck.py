"""Check rendered commands with SGLang's own argument parsers, offline.

Two halves in one file:

- Run as a script with the SGLang virtualenv's Python (``scripts/setup-sglang-venv``),
  it reads a JSON list of argvs on stdin, parses each with the parser of the module it
  names, and writes a JSON list of results on stdout. Nothing is launched: server
  commands go through ``ServerArgs.add_cli_args(parser); parser.parse_args(args)``
  (reference/sglang.md §7.5), router commands through
  ``sglang_router.launch_router.parse_router_args``, benchmark clients through their
  own parsers. This half imports only the standard library and SGLang.
- Imported from pdbench, :func:`check_argvs` runs that script in one subprocess for
  any number of argvs (importing SGLang costs seconds) and returns the results.

An argv is a full command (``[python, "-m", module, *args]``) or ``[module, *args]``.
A result is ``{"module", "ok", "error", "warnings", "explicit"}``: ``error`` is the
parser's message, ``warnings`` what SGLang logged or printed while parsing (e.g. a
deprecated flag), ``explicit`` the parsed values that differ from the defaults.
"""

from __future__ import annotations

import os
import sys

if (
    __name__ == "__main__"
    and sys.path
    and os.path.realpath(sys.path[0]) == os.path.dirname(os.path.realpath(__file__))
):
    # Run as a script: this package's directory (with its trace.py, config.py) must not
    # shadow modules that SGLang and torch import.
    del sys.path[0]

import argparse  # noqa: E402
import contextlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import subprocess  # noqa: E402
from pathlib import Path  # noqa: E402

SERVER_MODULES = ("sglang.launch_server",)
ROUTER_MODULES = ("sglang_router.launch_router",)
BENCH_SERVING_MODULES = ("sglang.bench_serving", "sglang.benchmark.serving")
ONE_BATCH_MODULES = ("sglang.bench_one_batch_server", "sglang.benchmark.one_batch_server")


def default_python() -> Path:
    """The SGLang virtualenv's interpreter: ``$PDBENCH_SGLANG_PYTHON`` or the repo's."""
    env = os.environ.get("PDBENCH_SGLANG_PYTHON")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / ".venv-sglang" / "bin" / "python"


def check_argvs(argvs, python: str | os.PathLike | None = None, timeout: float = 600) -> list:
    """Parse every argv with SGLang's parsers in one subprocess; one result per argv."""
    python = Path(python) if python else default_python()
    proc = subprocess.run(
        [str(python), "-P", str(Path(__file__).resolve())],
        input=json.dumps([list(map(str, a)) for a in argvs]),
        capture_output=True,
        text=True,
        timeout=timeout,
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


def _parse_router(args):
    from sglang_router import launch_router

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
        parse = _parse_router
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


def main() -> int:
    argvs = json.load(sys.stdin)
    # Keep stdout for the JSON answer: whatever SGLang prints goes to stderr.
    answer = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    argparse.ArgumentParser.error = _raise_instead_of_exit
    logging.getLogger().setLevel(logging.WARNING)
    results = [_check_one(argv) for argv in argvs]
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
