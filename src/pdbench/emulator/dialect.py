"""What the emulated SGLang version prints, writes and accepts: the emulator's one version
switch (``PDBENCH_EMULATOR_SGLANG_VERSION``, default ``0.5.23``).

Facts the workflow also depends on come from :mod:`pdbench.dialects` (the project's table,
checked against the releases' wheels), so the emulator and the workflow cannot disagree
about them: the decode-line head (``Decode batch.`` / ``Decode batch [iter],`` /
``Decode batch,``) and its trailing ``, ``; ``-DP-``/``-EP-`` in trace names; ``num_steps``
capturing N-1 batches before 0.5.16; the ``/start_profile`` keys a release reads (others are
ignored, so a client ``profile_id`` before 0.5.15 is not used); ``profile_by_stage`` on a PD
decode server (it crashes the server before 0.5.14); ``/server_info`` (before
0.5.6 only ``/get_server_info``); which flags a release rejects (option renames,
``--cuda-graph-bs`` from 0.5.20, removed values such as ``cutlass_mla``); the
``--attn-dp-size`` deprecation of ``--enable-dp-attention`` (0.5.22); and how a server
picks a request's DP rank (``--load-balance-method`` choices and default, the rule per
mode such as ``bootstrap_room % dp``, the body key that names a rank).

The rest is emulator-only spelling, from SGLang's log and trace history (the PRs and dates
in ``docs/sglang-formats.md``); a change known by its merge date but not tied to a release
is placed at the first release after that date (marked "dated"):

| change                                                          | first version |
|-----------------------------------------------------------------|---------------|
| ``cuda graph: B`` on decode lines; ``(with profile id: X)``     | 0.4.7         |
| ``#retracted-req`` (PD decode)                                  | 0.4.9         |
| `` EP{e}`` in the rank prefix                                   | 0.4.10        |
| ``/health`` generates a token (before: plain 200)               | 0.5.1         |
| trailing ``, `` on prefill lines (until the decode line drops it) | 0.5.2       |
| ``-EXTEND``/``-DECODE`` stage suffix in trace names             | 0.5.3         |
| ``#prealloc-req``, ``#transfer-req`` (PD decode and prefill); ``#inflight-req`` | 0.5.4 |
| ``Prefill batch,``                                              | 0.5.5         |
| ``profile_prefix`` in trace names                               | 0.5.6         |
| ``cuda graph`` on prefill lines (with the trailing-comma change) | 0.5.9        |
| ``#pending-token`` on prefill lines (dated 2026-04-10)          | 0.5.10        |
| ``step[MODE bs=N]`` spans; PD prefill ``#bootstrap-req`` (dated 2026-04-22 / 05-04) | 0.5.11 |
| ``scheduler.*`` spans while profiling (dated 2026-06-14)        | 0.5.15        |
| ``#optimistic-req`` on PD prefill lines (dated 2026-07-12)      | 0.5.16        |
| ``/ready``; no ``/get_load``                                     | 0.5.23        |

0.5.17 was compared with real SGLang 0.5.17 output recorded on an H200 (a toy model: plain,
fill/release and PD runs), 0.5.5 with a v0.5.5.post2 GB200 EP48 decode log and its traces
(public: shifangx/Scripts-SGLang, commit 481e976), 0.5.3 with the runbook's example lines
(2025-10, the README_CN.md of that repository).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from packaging.version import Version

from pdbench import dialects as project
from pdbench.errors import ConfigError

DEFAULT_VERSION = "0.5.23"

# --enable-deepep-moe: a no-op from 2025-09-23, an error from 0.5.4 (pdbench.dialects,
# wheels 0.5.1 and 0.5.4).
_DEEPEP_FLAG_REJECTED = Version("0.5.4")
# The release in which the decode line dropped its trailing ", " (pdbench.dialects).
_NEW_LAYOUT = Version("0.5.9")


def _fmt2(x: float) -> str:
    return f"{x:.2f}"


@dataclass(frozen=True)
class Dialect:
    """The spelling of one SGLang version."""

    version: str
    base: project.Dialect = field(repr=False)

    @property
    def release(self) -> Version:
        return self.base.release

    def at_least(self, version: str) -> bool:
        return self.release >= Version(version)

    # ------------------------------------------------------------------ log lines

    def rank_prefix(self, dp: int | None, tp: int | None, ep: int | None) -> str:
        """`` DP{d} TP{t} EP{e}``: each part only where it applies (``None`` = does not)."""
        parts = []
        if dp is not None:
            parts.append(f" DP{dp}")
        if tp is not None:
            parts.append(f" TP{tp}")
        if ep is not None and self.at_least("0.4.10"):
            parts.append(f" EP{ep}")
        return "".join(parts)

    def _decode_head(self, iteration: int | None, log_iters: bool) -> str:
        head = self.base.decode_batch_head
        if "{iter}" in head:
            return head.format(iter=iteration or 0)
        if log_iters and self.at_least("0.5.5"):
            return f"Decode batch [{iteration or 0}],"
        return head

    def _prefill_head(self, iteration: int | None, log_iters: bool) -> str:
        head = self._decode_head(iteration, log_iters)
        return "Prefill" + head[len("Decode") :]

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
        parts = [
            f"#running-req: {running}",
            f"#token: {tokens}",
            f"token usage: {_fmt2(token_usage)}",
        ]
        if pd_decode:
            parts.append(f"pre-allocated usage: {_fmt2(prealloc_usage)}")
            if self.at_least("0.5.4"):
                parts.append(f"#prealloc-req: {prealloc}")
                parts.append(f"#transfer-req: {transfer}")
            if self.at_least("0.4.9"):
                parts.append(f"#retracted-req: {retracted}")
        if self.at_least("0.4.7"):
            parts.append(f"cuda graph: {cuda_graph}")
        parts.append(f"gen throughput (token/s): {_fmt2(gen_throughput)}")
        parts.append(f"#queue-req: {queue}")
        body = ", ".join(parts)
        if self.base.decode_line_trailing_comma:
            body += ", "
        return f"{self._decode_head(iteration, log_iters)} {body}"

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
        if pd_prefill and not self.at_least("0.5.4"):
            parts += [
                f"#unbootstrapped-req: {bootstrap}",
                f"#queue-req: {queue}",
                f"#transferring-req: {transferring}",
            ]
        else:
            parts.append(f"#queue-req: {queue}")
            if self.at_least("0.5.10"):
                parts.append(f"#pending-token: {pending_token}")
            if pd_prefill:
                label = "#bootstrap-req" if self.at_least("0.5.11") else "#prealloc-req"
                parts.append(f"{label}: {bootstrap}")
                parts.append(f"#inflight-req: {inflight}")
                if self.at_least("0.5.16"):
                    parts.append("#optimistic-req: 0")
        if self.release >= _NEW_LAYOUT:
            parts.append("cuda graph: False")
        if self.at_least("0.4.9"):
            parts.append(f"input throughput (token/s): {_fmt2(input_throughput)}")
        body = ", ".join(parts)
        if self.at_least("0.5.2") and self.release < _NEW_LAYOUT:
            body += ", "
        return f"{self._prefill_head(iteration, log_iters)} {body}"

    def profile_start_line(self, output_dir: str, profile_id: str, stage: str | None = None) -> str:
        stage_part = f" for {stage}" if stage else ""
        if self.at_least("0.4.7"):
            return (
                f"Profiling starts{stage_part}. Traces will be saved to: {output_dir} "
                f"(with profile id: {profile_id})"
            )
        return f"Profiling starts. Traces will be saved to: {output_dir} (with id {profile_id})"

    @staticmethod
    def profile_stop_line(stage: str | None = None) -> str:
        return f"Stop profiling-{stage}..." if stage else "Stop profiling..."

    @staticmethod
    def profile_done_line(output_dir: str, merge_message: str = "") -> str:
        return f"Profiling done. Traces are saved to: {output_dir}{merge_message}"

    # ------------------------------------------------------------------ profiles and traces

    @property
    def step_spans(self) -> bool:
        """``step[MODE bs=N]`` ``record_function`` spans around each forward."""
        return self.at_least("0.5.11")

    @property
    def scheduler_spans(self) -> bool:
        """``scheduler.run_batch`` and friends recorded while profiling."""
        return self.at_least("0.5.15")

    def profile_keys(self) -> frozenset[str]:
        """The ``/start_profile`` keys this release reads (others are ignored)."""
        return self.base.start_profile_keys

    def captured_steps(self, num_steps: int, start_step_given: bool) -> int:
        """Batches a ``num_steps`` profile captures (N-1 before sglang #30215, 2026-07-10)."""
        if start_step_given or not self.base.profile_captures_one_less:
            return num_steps
        return max(num_steps - 1, 0)

    @property
    def by_stage_crashes_on_pd_decode(self) -> bool:
        """A by-stage profile meets a PREBUILT batch on a PD decode server and raises."""
        return not self.base.profile_by_stage_on_pd_decode

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
        if self.base.trace_name_rank_suffixes:
            if dp is not None:
                name += f"-DP-{dp}"
            if ep is not None:
                name += f"-EP-{ep}"
        if stage:
            name += f"-{stage}" if self.at_least("0.5.3") else f"-ForwardMode.{stage}"
        if prefix and self.at_least("0.5.6"):
            name = f"{prefix}-{name}"
        return name + ".trace.json.gz"

    def run_batch_frame(self) -> str:
        """The ``python_function`` name of the scheduler's ``run_batch`` frame."""
        line = 1985 if self.at_least("0.5.5") else 1862 if self.at_least("0.5.0") else 1544
        return f"/sgl-workspace/sglang/python/sglang/srt/managers/scheduler.py({line}): run_batch"

    # ------------------------------------------------------------------ server behaviour

    @property
    def health_generates(self) -> bool:
        return self.at_least("0.5.1")

    @property
    def has_server_info(self) -> bool:
        """``/server_info`` and ``/model_info`` (else only the ``/get_…`` spellings)."""
        return self.base.server_info_path == "/server_info"

    @property
    def has_ready_endpoint(self) -> bool:
        return self.at_least("0.5.23")

    @property
    def has_get_load(self) -> bool:
        return not self.at_least("0.5.23")

    @property
    def deprecates_dp_attention_flag(self) -> bool:
        return self.base.dp_attention == "attn-dp-size"

    def rejected_flag(self, flag: str, value: str | None = None) -> str | None:
        """The argparse error this release gives for ``flag`` (with ``value``), or None."""
        name = flag[2:] if flag.startswith("--") else flag
        if name == "enable-deepep-moe":
            return (
                f"unrecognized arguments: {flag}" if self.release >= _DEEPEP_FLAG_REJECTED else None
            )
        if name in ("cuda-graph-bs", "cuda-graph-max-bs"):
            if self.base.legacy_cuda_graph_bs_accepted:
                return None
            return f"ambiguous option: {flag} could match {flag}-decode, {flag}-prefill"
        if name == "moe-a2a-backend" and self.base.deepep_moe_flag:
            return f"unrecognized arguments: {flag}"
        if name == "attn-dp-size" and self.base.dp_attention != "attn-dp-size":
            return f"unrecognized arguments: {flag}"
        if name in self.base.removed_options:
            return f"unrecognized arguments: {flag}"
        renames = self.base.renames
        if name in renames and renames[name] != name:
            return f"unrecognized arguments: {flag}"
        if value is not None:
            why = self.base.removed_values.get(name, {}).get(value)
            if why:
                return f"argument {flag}: invalid choice: {value!r} ({why})"
        return None


def dialect_for(version: str) -> Dialect:
    """The dialect of ``version``; ValueError for a string that is not a supported version."""
    try:
        base = project.dialect_for_version(version, key="PDBENCH_EMULATOR_SGLANG_VERSION")
    except ConfigError as exc:
        raise ValueError(str(exc)) from None
    return Dialect(version, base)
