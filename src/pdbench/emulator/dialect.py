"""What the emulated SGLang version prints and writes: the emulator's one version switch.

Every version-dependent spelling the emulator produces is decided here, from
``PDBENCH_EMULATOR_SGLANG_VERSION`` (default ``0.5.23``). The thresholds follow
``reference/sglang.md`` §4-§5 and §7.3; a change that the reference dates but does not tie to
a release is placed at the first release after that date (SGLang released about monthly in
2026), which is an assumption marked ``(dated)`` below.

| change                                                        | first version |
|---------------------------------------------------------------|---------------|
| ``cuda graph: B, `` in decode lines                           | 0.4.7         |
| profile start line ``(with profile id: X)`` (was ``(with id X)``) | 0.4.7     |
| ``#retracted-req`` (PD decode)                                | 0.4.9         |
| `` EP{e}`` in the rank prefix; trailing ``, `` on decode lines | 0.4.10       |
| ``/health`` generates a token (before: plain 200)             | 0.5.1         |
| trailing ``, `` on prefill lines                              | 0.5.2         |
| ``-EXTEND``/``-DECODE`` stage suffix in trace names           | 0.5.3         |
| ``#prealloc-req``, ``#transfer-req``; ``-DP-``/``-EP-`` in trace names; ``Decode batch [iter].`` | 0.5.4 |
| ``Decode batch,``/``Prefill batch,``; ``--enable-deepep-moe`` rejected | 0.5.5 |
| ``profile_prefix`` in trace names                             | 0.5.6         |
| trailing ``, `` dropped; ``cuda graph`` on prefill lines (dated 2026-01-30) | 0.5.8 |
| ``#pending-token`` on prefill lines (dated 2026-04-10)        | 0.5.10        |
| ``step[MODE bs=N]`` spans; PD prefill ``#bootstrap-req`` (dated 2026-04-22 / 05-04) | 0.5.11 |
| ``scheduler.*`` spans while profiling (dated 2026-06-14)      | 0.5.15        |
| ``num_steps=N`` captures N batches (was N-1); ``#optimistic-req`` (dated 2026-07-10/12) | 0.5.16 |
| ``profile_by_stage`` works on PD decode; ``--cuda-graph-bs`` rejected; ``/ready``; no ``/get_load`` | 0.5.23 |

0.5.17 is checked against the real 0.5.17 output in ``fixtures/h200-sglang-0.5.17-*``
(step spans, scheduler spans, ``num_steps`` 10 giving 10 spans, the prefill and decode
layouts); 0.5.5 against ``fixtures/gb200-ep48-fp4-decode``; 0.5.3 against the runbook.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_VERSION = "0.5.23"

_VERSION_RE = re.compile(r"^v?(\d+)\.(\d+)(?:\.(\d+))?(?:\.?post(\d+))?(.*)$")


def parse_version(text: str) -> tuple[int, int, int, int]:
    """``"0.5.5.post2"`` -> ``(0, 5, 5, 2)``; release candidates and dev builds count as the
    release they lead to."""
    m = _VERSION_RE.match(text.strip())
    if not m:
        raise ValueError(
            f"PDBENCH_EMULATOR_SGLANG_VERSION={text!r} is not an SGLang version such as 0.5.23"
        )
    major, minor, patch, post, _rest = m.groups()
    return (int(major), int(minor), int(patch or 0), int(post or 0))


def _fmt2(x: float) -> str:
    return f"{x:.2f}"


@dataclass(frozen=True)
class Dialect:
    """The spelling of one SGLang version."""

    version: str

    @property
    def v(self) -> tuple[int, int, int, int]:
        return parse_version(self.version)

    def at_least(self, major: int, minor: int, patch: int = 0, post: int = 0) -> bool:
        return self.v >= (major, minor, patch, post)

    # ------------------------------------------------------------------ log lines

    def rank_prefix(self, dp: int | None, tp: int | None, ep: int | None) -> str:
        """`` DP{d} TP{t} EP{e}``: each part only where it applies (``None`` = does not)."""
        parts = []
        if dp is not None:
            parts.append(f" DP{dp}")
        if tp is not None:
            parts.append(f" TP{tp}")
        if ep is not None and self.at_least(0, 4, 10):
            parts.append(f" EP{ep}")
        return "".join(parts)

    def _word(self, kind: str, iteration: int | None, log_iters: bool) -> str:
        sep = "," if self.at_least(0, 5, 5) else "."
        if self.at_least(0, 5, 4) and not self.at_least(0, 5, 5):
            return f"{kind} batch [{iteration or 0}]{sep}"
        if log_iters and self.at_least(0, 5, 5):
            return f"{kind} batch [{iteration or 0}]{sep}"
        return f"{kind} batch{sep}"

    @property
    def decode_trailing_comma(self) -> bool:
        return self.at_least(0, 4, 10) and not self.at_least(0, 5, 8)

    def decode_line(
        self,
        *,
        running: int,
        tokens: int,
        token_usage: float,
        gen_throughput: float,
        queue: int,
        cuda_graph: bool,
        pd_decode: bool,
        prealloc_usage: float = 0.0,
        prealloc: int = 0,
        transfer: int = 0,
        retracted: int = 0,
        iteration: int | None = None,
        log_iters: bool = False,
    ) -> str:
        parts = [f"#running-req: {running}", f"#token: {tokens}", f"token usage: {_fmt2(token_usage)}"]
        if pd_decode:
            parts.append(f"pre-allocated usage: {_fmt2(prealloc_usage)}")
            if self.at_least(0, 5, 4):
                parts.append(f"#prealloc-req: {prealloc}")
                parts.append(f"#transfer-req: {transfer}")
            if self.at_least(0, 4, 9):
                parts.append(f"#retracted-req: {retracted}")
        if self.at_least(0, 4, 7):
            parts.append(f"cuda graph: {cuda_graph}")
        parts.append(f"gen throughput (token/s): {_fmt2(gen_throughput)}")
        parts.append(f"#queue-req: {queue}")
        body = ", ".join(parts)
        if self.decode_trailing_comma:
            body += ", "
        return f"{self._word('Decode', iteration, log_iters)} {body}"

    def prefill_line(
        self,
        *,
        new_seq: int,
        new_token: int,
        cached_token: int,
        token_usage: float,
        running: int,
        queue: int,
        input_throughput: float,
        pd_prefill: bool,
        pending_token: int = 0,
        bootstrap: int = 0,
        inflight: int = 0,
        transferring: int = 0,
        iteration: int | None = None,
        log_iters: bool = False,
    ) -> str:
        parts = [
            f"#new-seq: {new_seq}",
            f"#new-token: {new_token}",
            f"#cached-token: {cached_token}",
            f"token usage: {_fmt2(token_usage)}",
            f"#running-req: {running}",
        ]
        if pd_prefill and not self.at_least(0, 5, 4):
            parts += [
                f"#unbootstrapped-req: {bootstrap}",
                f"#queue-req: {queue}",
                f"#transferring-req: {transferring}",
            ]
        else:
            parts.append(f"#queue-req: {queue}")
            if self.at_least(0, 5, 10):
                parts.append(f"#pending-token: {pending_token}")
            if pd_prefill:
                label = "#bootstrap-req" if self.at_least(0, 5, 11) else "#prealloc-req"
                parts.append(f"{label}: {bootstrap}")
                parts.append(f"#inflight-req: {inflight}")
                if self.at_least(0, 5, 16):
                    parts.append("#optimistic-req: 0")
        if self.at_least(0, 5, 8):
            parts.append("cuda graph: False")
        if self.at_least(0, 4, 9):
            parts.append(f"input throughput (token/s): {_fmt2(input_throughput)}")
        body = ", ".join(parts)
        if self.at_least(0, 5, 2) and not self.at_least(0, 5, 8):
            body += ", "
        return f"{self._word('Prefill', iteration, log_iters)} {body}"

    def profile_start_line(self, output_dir: str, profile_id: str, stage: str | None = None) -> str:
        stage_part = f" for {stage}" if stage else ""
        if self.at_least(0, 4, 7):
            return (
                f"Profiling starts{stage_part}. Traces will be saved to: {output_dir} "
                f"(with profile id: {profile_id})"
            )
        return f"Profiling starts. Traces will be saved to: {output_dir} (with id {profile_id})"

    @staticmethod
    def profile_stop_line(stage: str | None = None) -> str:
        return f"Stop profiling-{stage}..." if stage else "Stop profiling..."

    @staticmethod
    def profile_done_line(output_dir: str) -> str:
        return f"Profiling done. Traces are saved to: {output_dir}"

    # ------------------------------------------------------------------ traces

    @property
    def step_spans(self) -> bool:
        """``step[MODE bs=N]`` ``record_function`` spans around each forward."""
        return self.at_least(0, 5, 11)

    @property
    def scheduler_spans(self) -> bool:
        """``scheduler.run_batch`` and friends recorded while profiling."""
        return self.at_least(0, 5, 15)

    def captured_steps(self, num_steps: int, start_step_given: bool) -> int:
        """Batches a ``num_steps`` profile captures (sglang.md §5.3)."""
        if start_step_given or self.at_least(0, 5, 16):
            return num_steps
        return max(num_steps - 1, 0)

    @property
    def by_stage_crashes_on_pd_decode(self) -> bool:
        return not self.at_least(0, 5, 23)

    def trace_name(
        self,
        *,
        profile_id: str,
        tp: int,
        dp: int | None,
        ep: int | None,
        stage: str | None = None,
        prefix: str | None = None,
    ) -> str:
        """``[{prefix}-]{profile_id}-TP-{tp}[-DP-{dp}][-EP-{ep}][-{STAGE}].trace.json.gz``."""
        name = f"{profile_id}-TP-{tp}"
        if self.at_least(0, 5, 4):
            if dp is not None:
                name += f"-DP-{dp}"
            if ep is not None:
                name += f"-EP-{ep}"
        if stage:
            name += f"-{stage}" if self.at_least(0, 5, 3) else f"-ForwardMode.{stage}"
        if prefix and self.at_least(0, 5, 6):
            name = f"{prefix}-{name}"
        return name + ".trace.json.gz"

    def run_batch_frame(self) -> str:
        """The ``python_function`` name of the scheduler's ``run_batch`` frame."""
        line = 1985 if self.at_least(0, 5, 5) else 1862 if self.at_least(0, 5, 0) else 1544
        return f"/sgl-workspace/sglang/python/sglang/srt/managers/scheduler.py({line}): run_batch"

    # ------------------------------------------------------------------ server behaviour

    @property
    def health_generates(self) -> bool:
        return self.at_least(0, 5, 1)

    @property
    def has_ready_endpoint(self) -> bool:
        return self.at_least(0, 5, 23)

    @property
    def has_get_load(self) -> bool:
        return not self.at_least(0, 5, 23)

    @property
    def has_slow_down(self) -> bool:
        return self.v >= (0, 4, 6, 3)

    def rejected_flag(self, flag: str) -> str | None:
        """The argparse error this version gives for ``flag``, or None when it accepts it."""
        if flag == "--enable-deepep-moe" and self.at_least(0, 5, 5):
            return f"unrecognized arguments: {flag}"
        if flag in ("--cuda-graph-bs", "--cuda-graph-max-bs") and self.at_least(0, 5, 23):
            return (
                f"ambiguous option: {flag} could match {flag}-decode, {flag}-prefill"
            )
        return None

    @property
    def deprecates_dp_attention_flag(self) -> bool:
        return self.at_least(0, 5, 23)


def dialect_for(version: str) -> Dialect:
    """The dialect of ``version``; raises ValueError for a string that is not a version."""
    parse_version(version)
    return Dialect(version)
