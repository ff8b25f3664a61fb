"""SGLang's log record layout: ``[YYYY-mm-dd HH:MM:SS[.mmm]{ rank prefix}] message``.

Lines go to stdout, one ``write`` and ``flush`` per line, so a ``tee``'d log is complete up
to the last line at any moment. The clock is the local wall clock, as SGLang's ``asctime``;
``SGLANG_LOG_MS=1`` adds milliseconds as it does in SGLang.
"""

from __future__ import annotations

import os
import sys
import time
from typing import IO, Iterable


class LogWriter:
    def __init__(self, stream: IO[str] | None = None, with_ms: bool | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout
        if with_ms is None:
            with_ms = os.environ.get("SGLANG_LOG_MS", "").strip().lower() in ("1", "true")
        self.with_ms = with_ms
        self._sec = -1
        self._sec_text = ""

    def stamp(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        sec = int(now)
        if sec != self._sec:
            self._sec = sec
            self._sec_text = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(sec))
        if self.with_ms:
            return f"{self._sec_text}.{int((now - sec) * 1000):03d}"
        return self._sec_text

    def line(self, message: str, prefix: str = "") -> None:
        """One record; ``prefix`` is the rank part with its leading space (`` DP0 TP0``)."""
        self._write(f"[{self.stamp()}{prefix}] {message}\n")

    def lines(self, records: Iterable[tuple[str, str]]) -> None:
        """Several ``(prefix, message)`` records with one timestamp."""
        stamp = self.stamp()
        for prefix, message in records:
            self._write(f"[{stamp}{prefix}] {message}\n")

    def raw(self, text: str) -> None:
        """A line without the bracket prefix (tracebacks, third-party output)."""
        self._write(text if text.endswith("\n") else text + "\n")

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (BrokenPipeError, ValueError):
            pass
