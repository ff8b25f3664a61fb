"""The one wait every stage uses: poll until done, within a deadline, while checking
that what it waits on still runs and that no other stage of the run failed.

Stages follow logs and trace files every :data:`POLL_S` (only the bytes appended since
the last read, so a short period costs little and every stage sees its event within
50 ms). Whether servers still run (squeue, srun clients) is asked at most every
:data:`CHECK_EVERY_S`, which keeps the load on slurmctld low.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from .context import progress as print_progress
from .errors import StageError

POLL_S = 0.05
CHECK_EVERY_S = 2.0
PROGRESS_EVERY_S = 15.0

T = TypeVar("T")


def wait_for(
    what: str,
    step: Callable[[], T | None],
    *,
    timeout_s: float | None,
    alive: Callable[[], None] | None = None,
    check_run: Callable[[], None] | None = None,
    poll_s: float = POLL_S,
    check_every_s: float = CHECK_EVERY_S,
    progress: Callable[[float], str] | None = None,
    progress_every_s: float = PROGRESS_EVERY_S,
    progress_at_start: bool = False,
    on_timeout: Callable[[float], str] | None = None,
    error: type[Exception] = StageError,
) -> T:
    """Call ``step`` until it returns something other than None, and return that.

    Between calls: ``check_run()`` (raises when another stage of the run failed),
    ``alive()`` at most every ``check_every_s`` (raises, naming what died), a progress
    line ``progress(waited)`` every ``progress_every_s``. After ``timeout_s`` (None:
    no deadline; ``step`` decides) it raises ``error(on_timeout(waited))``.
    """
    start = time.monotonic()
    next_check = start
    next_progress = start if progress_at_start else start + progress_every_s
    while True:
        result = step()
        if result is not None:
            return result
        if check_run is not None:
            check_run()
        now = time.monotonic()
        if alive is not None and now >= next_check:
            alive()
            next_check = now + check_every_s
        waited = now - start
        if timeout_s is not None and waited > timeout_s:
            raise error(on_timeout(waited) if on_timeout else
                        f"{what}: not done after {timeout_s:.0f} s")
        if progress is not None and now >= next_progress:
            print_progress(progress(waited))
            next_progress += progress_every_s
        time.sleep(poll_s)


__all__ = ["CHECK_EVERY_S", "POLL_S", "PROGRESS_EVERY_S", "wait_for"]
