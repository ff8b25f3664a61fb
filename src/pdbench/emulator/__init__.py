"""A test double for SGLang's GPU servers, for rehearsals and tests. It is never a measurement.

``python -m pdbench.emulator <the real launch_server flags>`` stands in for
``python -m sglang.launch_server`` on machines without GPUs. It accepts the same command
line, serves the same HTTP API on node 0 of a server (a dummy health endpoint on the other
nodes), prints SGLang-format log lines for the DP ranks each node hosts, and writes
torch-profiler-format traces. Its step times, batch sizes and throughput come from a
configured model (``PDBENCH_EMULATOR_*`` environment variables), not from any hardware:
numbers it produces exercise the workflow and its parsers and must never be reported as
results. docs/emulator.md describes the behaviour, the knobs and the known gaps.

Modules: ``args`` (command line and knobs), ``dialect`` (version-dependent spelling),
``logfmt`` (log writer), ``tracefmt`` (trace files), ``httpd`` (a small HTTP/1.1 server),
``cluster`` (node 0 and its peers), ``transfer`` (PD bootstrap rooms), ``experts``
(expert-distribution recorder), ``scheduler`` (the batch and step model), ``server``
(HTTP handlers and the entry point).
"""


# What pdbench's preflight probe asks a server module that is not SGLang's own: the
# SGLang release it stands for, and whether a command line would start.
def preflight_version() -> str:
    import os

    from .args import Knobs

    return Knobs.from_env(dict(os.environ)).sglang_version


def preflight_validate(args: list[str]) -> None:
    """Raise what the emulator's start-up would raise for ``args`` (SGLang's refusals)."""
    import os

    from .args import parse_args

    parse_args(list(args), dict(os.environ))
