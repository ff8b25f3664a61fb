"""File layout of a grid point's directory: the one place that names its files."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InputError


@dataclass(frozen=True)
class PointPaths:
    """``results/{experiment}/{point}/`` and everything in it."""

    root: Path

    @classmethod
    def of(cls, results: str | os.PathLike, experiment: str, point: str) -> PointPaths:
        return cls(Path(results) / experiment / point)

    @property
    def experiment(self) -> str:
        return self.root.parent.name

    @property
    def point(self) -> str:
        return self.root.name

    @property
    def allocation(self) -> Path:
        return self.root / "allocation.json"

    @property
    def pending_allocation(self) -> Path:
        """A holder job submitted and not yet running (removed once allocation.json is
        written or the holder is cancelled), so a teardown can find it while it queues."""
        return self.root / "allocation.pending.json"

    @property
    def env_sh(self) -> Path:
        return self.root / "node_list_env.sh"

    @property
    def plan(self) -> Path:
        return self.root / "plan.json"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def commands(self) -> Path:
        return self.root / "commands"

    def ready(self, server: str) -> Path:
        return self.root / "ready" / f"{server}.json"

    def ready_markers(self) -> list[Path]:
        return sorted((self.root / "ready").glob("*.json"))

    @staticmethod
    def server_log_role(server: str) -> str:
        """Log name stem of a server's nodes, as the runbook's launch scripts named them."""
        return f"launch_server_{server}"

    def server_logs(self, server: str) -> list[Path]:
        stem = self.server_log_role(server)
        return sorted(
            self.logs.glob(f"{stem}_node_rank_*.log"),
            key=lambda p: int(p.stem.rsplit("_", 1)[1]),
        )

    @property
    def filled(self) -> Path:
        return self.root / "fill" / "filled.json"

    @property
    def released(self) -> Path:
        return self.root / "fill" / "released.json"

    @property
    def fill_curve(self) -> Path:
        return self.root / "fill" / "curve.csv"

    def snapshot(self, k: int) -> Path:
        return self.root / "profile" / str(k) / "snapshot.json"

    def snapshot_traces(self, k: int) -> Path:
        return self.root / "profile" / str(k) / "traces"

    @property
    def client(self) -> Path:
        return self.root / "bench" / "client.json"

    @property
    def client_output(self) -> Path:
        return self.root / "bench" / "client-output.jsonl"

    @property
    def client_log(self) -> Path:
        return self.logs / "bench_client.log"

    @property
    def bench(self) -> Path:
        return self.root / "bench" / "bench.jsonl"

    @property
    def throughput(self) -> Path:
        return self.root / "throughput.csv"

    @property
    def teardown(self) -> Path:
        return self.root / "teardown.json"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"


def read_json(path: str | os.PathLike) -> Any:
    try:
        with open(path) as fh:
            return json.load(fh)
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path} is not valid JSON: {exc}") from None


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write atomically: a crash never leaves a half-written marker or result."""
    write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)
