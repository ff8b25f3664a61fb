"""Stage: the benchmark client (rules ``bench_client`` and ``bench_result``).

The client starts on the client node while the servers load, held at a gate (see
:data:`pdbench.commands.CLIENT_GATE_ARMED`): its imports cost seconds that would
otherwise lie between "servers ready" and the first request. The fill lets it go
(:func:`let_client_go`, runbook step 7); ``bench_result`` waits for it to end and keeps
its JSONL only if it completed requests and generated tokens.
"""

from __future__ import annotations

from pathlib import Path

from . import commands, slurm
from .benchresult import last_line, summarize
from .context import PointContext, now, progress
from .errors import PdbenchError, StageError
from .layout import MEASUREMENT_DIRS, read_json, write_json, write_text
from .steps import (StepLaunch, describe_step, log_tail, server_alive, signal_step, start_step,
                    step_launch)
from .wait import wait_for

# A held client arms within seconds; a container image pulled on first use can take
# minutes.
CLIENT_ARM_TIMEOUT_S = 900.0
CLIENT_SIGNAL_ATTEMPTS = 10
BENCH_TIMEOUT_S = 7200.0



def client_launch(ctx: PointContext) -> tuple[StepLaunch, list[str]]:
    """The benchmark client's step (held at its gate) and the client command itself."""
    argv = commands.client_argv(ctx.cfg, ctx.point, ctx.plan,
                                output_file=ctx.paths.client_output.resolve())
    launch = step_launch(ctx, "client", [commands.gated_client_argv(argv)],
                         commands.client_env(ctx.cfg), [ctx.plan.client_node], "bench_client")
    return launch, argv


def start_client(ctx: PointContext) -> dict:
    """Start the benchmark client on the client node, held at its gate."""
    output = ctx.paths.client_output.resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.exists():
        output.unlink()  # bench_serving appends; one run per file
    launch, argv = client_launch(ctx)
    log = ctx.paths.node_log("bench_client", 0)
    log.unlink(missing_ok=True)  # the gate's lines are read from it: none from a former run
    step = start_step(ctx, launch)
    record = {"job_id": ctx.job_id, **step, "output": str(output), "log": str(log),
              "started_at": now(), "go_at": None, "argv": argv}
    write_json(ctx.paths.client, record)
    progress(f"client: step {step['step_id']} on {ctx.plan.client_node}, held until the fill "
             f"starts; log {log}")
    return record


def dead_message(client: dict, what: str) -> str:
    return (f"the benchmark client ({describe_step(client)}) {what}; srun "
            f"({client['srun_log']}) ends:\n{log_tail(Path(client['srun_log']), 5)}\n"
            f"its log ({client['log']}) ends:\n{log_tail(Path(client['log']))}")


def _log_has(log: Path, text: str) -> bool:
    try:
        return text in log.read_text(errors="replace")
    except FileNotFoundError:
        return False


def let_client_go(ctx: PointContext, *, timeout_s: float = CLIENT_ARM_TIMEOUT_S) -> dict:
    """Wait until the held client is armed, then send it the start signal, repeated until
    its log says it was released (the gate ignores repeats; scancel may report an error
    for a signal that was delivered, so delivery is confirmed from the log)."""
    client = read_json(ctx.paths.client)
    log = Path(client["log"])

    def alive() -> None:
        if not server_alive(client):
            raise StageError(dead_message(client, "ended before it was armed"))

    wait_for(
        "the benchmark client's gate",
        lambda: True if _log_has(log, commands.CLIENT_GATE_ARMED) else None,
        timeout_s=timeout_s,
        alive=alive,
        check_run=ctx.check_run,
        progress=lambda waited: f"fill: waiting for the client to start: {waited:.0f} s; "
                                f"last log line: {log_tail(log, 1).strip()[:160]}",
        progress_every_s=10.0,
        on_timeout=lambda waited: f"the benchmark client is not armed after {timeout_s:.0f} s"
                                  f" (no '{commands.CLIENT_GATE_ARMED}' in {log})",
    )
    signals = {"sent": 0, "complaint": ""}

    def signal() -> None:
        if signals["sent"] >= CLIENT_SIGNAL_ATTEMPTS:
            raise StageError(f"the benchmark client ({describe_step(client)}) did not "
                             f"start after {signals['sent']} start signals; scancel said: "
                             f"{signals['complaint'] or 'nothing'}; its log ends:\n"
                             + log_tail(log))
        if signals["sent"] and not server_alive(client):
            raise StageError(dead_message(client, "ended at its start signal"))
        signals["complaint"] = signal_step(client, "USR1") or \
            signals["complaint"]
        signals["sent"] += 1
        if signals["sent"] == 1:
            client["go_at"] = now()
            write_json(ctx.paths.client, client)

    wait_for("the benchmark client's start",
             lambda: True if _log_has(log, commands.CLIENT_GATE_RELEASED) else None,
             timeout_s=None, alive=signal, check_every_s=1.0)
    return client


def collect_bench(ctx: PointContext, *, timeout_s: float = BENCH_TIMEOUT_S) -> dict:
    """Wait for the client to finish and validate its JSONL before it becomes a result."""
    client = read_json(ctx.paths.client)
    wait_for(
        "the benchmark client",
        lambda: None if slurm.pid_alive(int(client["srun_pid"])) else True,
        timeout_s=timeout_s,
        check_run=ctx.check_run,
        poll_s=2.0,
        on_timeout=lambda waited: f"benchmark client still running after {timeout_s:.0f} s;"
                                  f" log {client['log']}",
    )
    output = Path(client["output"])
    try:
        result = _valid_client_result(output, Path(client["log"]),
                                      ctx.cfg["workload"]["client"])
    except PdbenchError as exc:
        # This measurement is not valid: it is kept under attempts/ and a rerun measures
        # again from the client on (on the same servers, if they still run).
        moved = ctx.paths.set_aside(client.get("job_id"), MEASUREMENT_DIRS,
                                    why="invalid-benchmark")
        raise StageError(f"{exc}\nthe measurement ({', '.join(moved['moved'])}) was moved "
                         f"to {moved['to']}; a rerun measures again") from None
    write_text(ctx.paths.bench, output.read_text())
    return result


def _valid_client_result(output: Path, log: Path, client: str) -> dict:
    """The summary of the client's last JSON line (:func:`pdbench.benchresult.summarize`,
    the same fields for either client), if it completed requests and generated tokens."""
    line = last_line(output)
    if line is None:
        raise StageError(f"benchmark client wrote no result ({output}); its log ends:\n"
                         + log_tail(log))
    summary = summarize(line, client, source=output)
    if not summary["completed"] or not summary["total_output_tokens"]:
        raise StageError(f"benchmark client completed {summary['completed']} requests and "
                         f"generated {summary['total_output_tokens']} tokens ({output}); the "
                         "point is not valid")
    return {**summary, "line": line}


__all__ = ["client_launch", "collect_bench", "let_client_go", "start_client"]
