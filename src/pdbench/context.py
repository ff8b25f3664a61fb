"""Everything a stage needs about one grid point, resolved once from config and files."""

from __future__ import annotations

import datetime as dt
import os
import sys
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from . import config as pdconfig
from . import runstate, topology
from .grid import Point
from .dialects import Dialect, dialect_for
from .errors import InputError
from .layout import PointPaths, read_json


def now(timespec: str = "milliseconds") -> str:
    """The current time in UTC, ISO 8601, as every stage records it."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec=timespec)


def progress(message: str) -> None:
    """Progress lines go to stderr (the rule's log); stdout is for JSON results."""
    stamp = time.strftime("%H:%M:%S")
    print(f"[{stamp}] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class PointContext:
    cfg: dict
    point: Point
    paths: PointPaths

    @classmethod
    def load(cls, config_path: str | os.PathLike, point_dir: str | os.PathLike) -> PointContext:
        cfg = pdconfig.load(config_path)
        paths = PointPaths(Path(point_dir))
        point = pdconfig.find_point(cfg, paths.experiment, paths.point)
        return cls(cfg, point, paths)

    @classmethod
    def for_allocation(cls, cfg: dict, point: Point, paths: PointPaths,
                       allocation: dict) -> PointContext:
        """A context whose allocation is given, not read from ``allocation.json``: what
        ``pdbench render`` uses to show a launch before any allocation exists."""
        ctx = cls(cfg, point, paths)
        ctx.__dict__["allocation"] = allocation  # the cached_property's slot
        return ctx

    @cached_property
    def dialect(self) -> Dialect:
        return dialect_for(self.cfg)

    @cached_property
    def allocation(self) -> dict:
        if not self.paths.allocation.exists():
            raise InputError(f"{self.paths.allocation} does not exist: allocate first")
        return read_json(self.paths.allocation)

    @property
    def job_id(self) -> int:
        """The allocation's job id (a rendered launch may hold a placeholder name)."""
        value = self.allocation["job_id"]
        return value if isinstance(value, str) and not value.isdigit() else int(value)

    @cached_property
    def plan(self) -> topology.NodePlan:
        return topology.plan_of_allocation(self.point, self.allocation, self.cfg["ports"])

    @property
    def shared_dir(self) -> Path:
        """Absolute directory of this point; the results directory must be on the
        filesystem every node sees (the Slurm executor needs that anyway)."""
        return self.paths.root.resolve()

    @property
    def results_root(self) -> Path:
        """``results/`` (the point directory is ``results/{experiment}/{point}``)."""
        return self.paths.root.parent.parent

    def check_run(self) -> None:
        """Raise :class:`pdbench.runstate.RunFailed` if another stage of the run failed."""
        runstate.check(self.results_root)

    @property
    def servers_started_by(self) -> str:
        """``experiment/point`` of the run that started this point's servers: its own, or
        on shared servers (site.share_servers) what its decode marker says (the group's
        first point, or a later one that started them again after a failure); before
        the servers are up, the group's first point."""
        own = f"{self.point.experiment}/{self.point.name}"
        if not self.point.shares_servers:
            return own
        marker = self.paths.ready("decode")
        if marker.exists():
            started_by = read_json(marker).get("servers_started_by")
            if isinstance(started_by, str) and started_by.count("/") == 1:
                return started_by
        home = pdconfig.servers_home(self.cfg, self.point)
        return f"{home.experiment}/{home.name}"

    @property
    def servers_paths(self) -> PointPaths:
        """The point directory of the run that started this point's servers (their logs
        and launch commands are there)."""
        experiment, point = self.servers_started_by.split("/")
        return self.paths.results.point(experiment, point)

    def decode_logs(self) -> list[Path]:
        return self.servers_paths.server_logs("decode")
