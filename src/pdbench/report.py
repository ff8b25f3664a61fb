"""Stage: the report people archive (rules ``report`` and ``grid_report``).

One self-contained HTML file per experiment (``results/ep{EP}/report.html``) and one over
every experiment of the config (``results/report.html``): tables computed with pandas
from the experiment's ``throughput.csv``, plots from :mod:`pdbench.plots` inlined as SVG,
each point's provenance summary from its ``manifest.json`` and the plotted detail from
its ``measurement.json``, rendered by a Jinja2 template. Nothing is fetched when the page
opens: no script, no font, no image comes from elsewhere.

Statistics: a point's headline is the median of tokens/s per decode GPU over its *valid*
snapshots, with their min and max and how many there are; every snapshot stays listed,
an invalid one with the reason the gate gave. No snapshot is picked as the best.
"""

from __future__ import annotations

import datetime as dt
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import InputError
from .layout import ExperimentPaths, PointPaths, read_json, read_json_if, write_text
from .throughput import merge_csvs

if TYPE_CHECKING:
    import jinja2
    import pandas as pd

TEMPLATES = Path(__file__).with_name("templates")
TEMPLATE = "page.html.j2"
# What the report is made from besides the data: the rule lists these as inputs, so a
# change to the report's code or template reruns the report (and only the report).
# pandas, Jinja2 and matplotlib (pdbench.plots) are imported where they are used: the
# workflow imports this module for CODE_FILES at every parse, which must stay quick.
CODE_FILES = (Path(__file__), Path(__file__).with_name("plots.py"), TEMPLATES / TEMPLATE)


def __getattr__(name: str):
    if name == "EMULATED_LABEL":  # one wording, kept with the plots that draw it
        from .plots import EMULATED_LABEL

        return EMULATED_LABEL
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

NUMERIC = ["ep", "prefill_groups", "snapshot", "global_batch", "target_global_batch",
           "rank_batch_min", "rank_batch_max", "ranks", "step_ms", "step_ms_p10",
           "step_ms_p90", "steps_used", "log_step_ms", "trace_log_ratio", "decode_gpus",
           "tokens_per_s_per_gpu", "client_output_throughput", "client_completed"]


def _truth(value) -> bool:
    return str(value).strip().lower() in ("true", "1", "yes")


def snapshot_frame(rows: Sequence[dict]) -> pd.DataFrame:
    """Every snapshot, typed: numbers as floats (NaN where empty), flags as booleans."""
    import pandas as pd

    df = pd.DataFrame(list(rows))
    if df.empty:
        return df
    for column in NUMERIC:
        df[column] = pd.to_numeric(df[column], errors="coerce")
    df["valid"] = df["valid"].map(_truth)
    df["emulated"] = df["emulated"].map(_truth)
    df["invalid_reason"] = df["invalid_reason"].fillna("").astype(str)
    bad = df["valid"] & ~(df["tokens_per_s_per_gpu"].map(math.isfinite)
                          & (df["tokens_per_s_per_gpu"] > 0))
    if bad.any():
        # A row that claims validity without a finite positive figure is not a number
        # to publish; it stays listed, marked.
        df.loc[bad, "valid"] = False
        df.loc[bad, "invalid_reason"] = "no finite positive tokens/s per GPU"
    return df


def point_summary(rows: Sequence[dict] | pd.DataFrame) -> pd.DataFrame:
    """Per point: median tokens/s per decode GPU over its valid snapshots, min, max and
    count, with the medians of what the figure is made of (global batch, step time)."""
    import pandas as pd

    df = rows if isinstance(rows, pd.DataFrame) else snapshot_frame(rows)
    if df.empty:
        return pd.DataFrame()
    keys = ["experiment", "point"] if "experiment" in df else ["point"]
    out = []
    for key, group in df.groupby(keys, sort=False):
        valid = group[group["valid"]]
        tps = valid["tokens_per_s_per_gpu"]
        first = group.iloc[0]
        out.append({
            **dict(zip(keys, key if isinstance(key, tuple) else (key,))),
            "ep": int(first["ep"]),
            "prefill_groups": int(first["prefill_groups"]),
            "eplb": first["eplb"],
            "snapshots": len(group),
            "valid_snapshots": len(valid),
            "tokens_per_s_per_gpu_median": tps.median() if len(valid) else math.nan,
            "tokens_per_s_per_gpu_min": tps.min() if len(valid) else math.nan,
            "tokens_per_s_per_gpu_max": tps.max() if len(valid) else math.nan,
            "global_batch_median": valid["global_batch"].median(),
            "step_ms_median": valid["step_ms"].median(),
            "step_ms_p10_median": valid["step_ms_p10"].median(),
            "step_ms_p90_median": valid["step_ms_p90"].median(),
            "trace_log_ratio_median": valid["trace_log_ratio"].median(),
            "decode_gpus": int(first["decode_gpus"]),
            "client_output_throughput": group["client_output_throughput"].median(),
            "fill_ended_by": ", ".join(sorted({str(v) for v in group["fill_ended_by"]})),
            "method": ", ".join(sorted({str(v) for v in group["method"]})),
            "steps_used": int(valid["steps_used"].median()) if len(valid) else 0,
            "emulated": bool(group["emulated"].any()),
        })
    return pd.DataFrame(out)


@dataclass
class Experiment:
    """One experiment's data: its snapshots and, per point, measurement and manifest."""

    name: str
    snapshots: pd.DataFrame
    measurements: dict[str, dict] = field(default_factory=dict)
    manifests: dict[str, dict] = field(default_factory=dict)
    root: Path = Path(".")  # results/{experiment}
    page_dir: Path = Path(".")  # where the page that links to its files is
    # Static EPLB's recorded distribution: its balance as recorded (trivial placement,
    # what the none points run) and with a balanced placement (an estimate), or an error.
    expert_balance: dict | None = None

    def link(self, path: Path) -> str:
        return os.path.relpath(path, self.page_dir)

    @property
    def summary(self) -> pd.DataFrame:
        return point_summary(self.snapshots)


def load_experiment(csv_path: str | os.PathLike, *, page_dir: Path) -> Experiment:
    exp_dir = ExperimentPaths(Path(csv_path).parent)
    df = snapshot_frame(merge_csvs([csv_path]))
    if df.empty:
        raise InputError(f"{csv_path}: no snapshot rows")
    df.insert(0, "experiment", exp_dir.root.name)
    exp = Experiment(exp_dir.root.name, df, root=exp_dir.root, page_dir=page_dir)
    for point in dict.fromkeys(df["point"]):
        paths = PointPaths(exp_dir.root / point)
        exp.measurements[point] = read_json(paths.measurement)
        exp.manifests[point] = read_json_if(paths.manifest, {})
    if exp_dir.expert_distribution.exists():
        exp.expert_balance = recorded_balance(exp_dir.expert_distribution,
                                              int(df["ep"].iloc[0]))
    return exp


def recorded_balance(path: Path, ep: int) -> dict:
    """Balance of the recorded dump over ``ep`` GPUs as recorded (the trivial placement)
    and with :func:`pdbench.balance.greedy_placement` (the estimate of a rebalance)."""
    from .balance import balance, greedy_placement, read_dump

    try:
        dump = read_dump(path)
        after = balance(dump, ep, placement=greedy_placement(dump, ep))
    except InputError as exc:
        return {"file": str(path), "error": str(exc)}
    try:
        before = balance(dump, ep)
    except InputError as exc:  # experts that do not divide over the GPUs: no trivial layout
        before = {"error": str(exc)}
    return {"file": str(path), "before": before, "after": after}


def eplb_comparison(exp: Experiment) -> list[dict]:
    """Per prefill-group count with more than one EPLB mode: each mode's median
    throughput and step time, the change against ``none``, and the balancedness its
    placement has on the recorded distribution (none: as recorded; static and online:
    the balanced estimate)."""
    summary = exp.summary
    if summary.empty:
        return []
    balance = exp.expert_balance or {}
    rows = []
    for groups, group in summary.groupby("prefill_groups", sort=True):
        if group["eplb"].nunique() < 2:
            continue
        base = group[group["eplb"] == "none"]["tokens_per_s_per_gpu_median"]
        base_tps = _finite(base.iloc[0]) if len(base) else None
        for row in group.to_dict("records"):
            placed = balance.get("before" if row["eplb"] == "none" else "after") or {}
            tps = _finite(row["tokens_per_s_per_gpu_median"])
            rows.append({
                "prefill_groups": int(groups), "eplb": row["eplb"], "point": row["point"],
                "tokens_per_s_per_gpu": tps, "step_ms": _finite(row["step_ms_median"]),
                "vs_none": (tps / base_tps - 1) if tps and base_tps else None,
                "balancedness": placed.get("balancedness"),
                "balancedness_estimated": row["eplb"] != "none",
            })
    return rows


def shared_servers_check(exp: Experiment, point: str) -> dict | None:
    """On shared servers: the point's first snapshot's step time against that of the
    point whose run started the servers it ran on (fresh). Both ran the same decode server at the
    same target batch, so a difference beyond ``report.shared_step_tolerance`` says that
    the servers' reuse (or what the prefill-group count changes in decode) moved the
    number. None: the point did not run on servers another point started."""
    manifest = exp.manifests.get(point) or {}
    shared = manifest.get("shared_servers")
    if not shared or shared.get("started_here"):
        return None
    started_by = str(shared.get("servers_started_by", ""))
    fresh = started_by.rsplit("/", 1)[-1]
    tolerance = ((manifest.get("config") or {}).get("report") or {}).get(
        "shared_step_tolerance", 0.05)
    steps = {}
    if not exp.snapshots.empty:
        first = exp.snapshots[exp.snapshots["snapshot"] == 1]
        steps = {row["point"]: _finite(row["step_ms"]) for row in first.to_dict("records")}
    step, fresh_step = steps.get(point), steps.get(fresh)
    ratio = step / fresh_step if step and fresh_step else None
    return {"fresh_point": started_by, "step_ms": step, "fresh_step_ms": fresh_step,
            "ratio": ratio, "tolerance": tolerance,
            "differ": ratio is not None and abs(ratio - 1) > tolerance}


def _finite(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _series(experiments: Sequence[Experiment]) -> list[dict]:
    series: dict[str, list[dict]] = {}
    for exp in experiments:
        for row in exp.summary.to_dict("records"):
            label = f"EP{row['ep']} \u00b7 EPLB {row['eplb']}"
            series.setdefault(label, []).append({
                "prefill_groups": row["prefill_groups"],
                "median": _finite(row["tokens_per_s_per_gpu_median"]),
                "min": _finite(row["tokens_per_s_per_gpu_min"]),
                "max": _finite(row["tokens_per_s_per_gpu_max"]),
                "snapshots": row["valid_snapshots"],
            })
    return [{"label": k, "points": sorted(v, key=lambda p: p["prefill_groups"])}
            for k, v in series.items()]


def _point_label(exp: Experiment, point: str, many: bool) -> str:
    return f"{exp.name}/{point}" if many else point


def figures(experiments: Sequence[Experiment], references: Sequence[dict], *,
            emulated: bool, detail: bool = True) -> dict[str, str]:
    """The page's plots as inline SVG, by name."""
    from . import plots

    many = len(experiments) > 1
    figs = {"throughput": plots.throughput_vs_prefill(
        _series(experiments), references, emulated=emulated)}
    batches, steps, curves, hours = [], [], [], []
    for exp in experiments:
        for point, meas in exp.measurements.items():
            label = _point_label(exp, point, many)
            for snap in meas.get("snapshots", []):
                mark = "" if snap.get("valid", True) else " (invalid)"
                batches.append({"label": f"{label} #{snap['snapshot']}{mark}",
                                "per_rank_batch": snap.get("per_rank_batch") or {},
                                "target_per_rank": meas.get("target_per_rank")})
                steps.append({"label": f"{label} #{snap['snapshot']}{mark}",
                              "periods_ms": snap.get("step_periods_ms") or [],
                              "log_step_ms": snap.get("log_step_ms")})
            curve = meas.get("fill_curve") or {}
            curves.append({"label": label, "ranks": curve.get("ranks") or {},
                           "target_per_rank": meas.get("target_per_rank"),
                           "release_s": curve.get("release_s")})
            stages = (exp.manifests.get(point) or {}).get("stages") or []
            hours.append({"label": label, "stages": {
                s["stage"]: s["gpu_hours"] for s in stages if s.get("gpu_hours") is not None}})
    figs["gpu-hours"] = plots.gpu_hours_by_stage(hours, emulated=emulated)
    balanced = [e for e in experiments if e.expert_balance and "after" in e.expert_balance]
    if balanced:
        figs["expert-load"] = plots.expert_load_per_rank([
            {"label": f"{e.name} {when}",
             "gpu_load": (e.expert_balance[key] or {}).get("gpu_load") or []}
            for e in balanced
            for key, when in (("before", "as recorded (trivial placement)"),
                              ("after", "balanced placement (estimate)"))],
            emulated=emulated)
    if detail:
        figs["rank-batches"] = plots.rank_batches(batches, emulated=emulated)
        figs["step-times"] = plots.step_time_distribution(steps, emulated=emulated)
        figs["fill-curves"] = plots.fill_curves(curves, emulated=emulated)
    return figs


def _router_version(manifest: dict, packages: dict) -> str | None:
    """The configured router generation's package and version, e.g. ``smg 1.13.0``."""
    router = ((manifest.get("config") or {}).get("router") or {})
    package = router.get("implementation") or "sglang-router"
    version = packages.get(package)
    return f"{package} {version}" if version and package != "sglang-router" else version


def _provenance(exp: Experiment, point: str) -> dict:
    m = exp.manifests.get(point) or {}
    servers = (m.get("sglang") or {}).get("servers") or {}
    served = sorted({s.get("version") for s in servers.values() if s.get("version")})
    packages = {name: ((s.get("packages") or {}).get("packages") or {})
                for name, s in servers.items()}
    gpu = m.get("gpu_hours") or {}
    repo = m.get("repository") or {}
    return {
        "manifest": exp.link(PointPaths(exp.root / point).manifest) if m else None,
        "commit": (repo.get("commit") or "")[:12] or None,
        "dirty": repo.get("dirty"),
        "configured": (m.get("sglang") or {}).get("configured_version"),
        "served": ", ".join(served) or None,
        "router": _router_version(m, packages.get("router", {})),
        "client": packages.get("client", {}).get("sglang"),
        "image": (m.get("container") or {}).get("image"),
        "job": (m.get("slurm") or {}).get("job_id"),
        "gpu_hours": gpu.get("from_stage_records"),
        "gpu_hours_sacct": gpu.get("from_sacct"),
        "gpu_hours_differ": gpu.get("differ"),
        "sacct_note": (gpu.get("sacct") or {}).get("unavailable") or gpu.get("note"),
        "shared": shared_servers_check(exp, point),
    }


def _environment() -> jinja2.Environment:
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES),
                             autoescape=True, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)

    def num(value, digits: int = 0) -> str:
        number = _finite(value)
        return "\u2013" if number is None else f"{number:,.{digits}f}"

    env.filters["num"] = num
    return env


def is_emulated(experiments: Sequence[Experiment]) -> bool:
    return any(bool(e.snapshots["emulated"].any()) for e in experiments)


def render(experiments: Sequence[Experiment], *, title: str, figs: dict[str, str],
           references: Sequence[dict], config_path: str | None = None,
           detail: bool = True) -> str:
    """The page; ``figs`` from :func:`figures` (drawn once, also written as files)."""
    import pandas as pd

    from .plots import EMULATED_LABEL

    snapshots = pd.concat([e.snapshots for e in experiments], ignore_index=True)
    emulated = is_emulated(experiments)
    summary = pd.concat([e.summary for e in experiments], ignore_index=True)
    prov = {(e.name, p): _provenance(e, p) for e in experiments for p in e.measurements}
    points = []
    for row in summary.to_dict("records"):
        exp = next(e for e in experiments if e.name == row["experiment"])
        points.append({**row, "provenance": prov[(row["experiment"], row["point"])],
                       "label": _point_label(exp, row["point"], len(experiments) > 1)})
    manifests = [m for e in experiments for m in e.manifests.values() if m]
    return _environment().get_template(TEMPLATE).render(
        title=title,
        emulated=emulated,
        emulated_label=EMULATED_LABEL,
        experiments=[e.name for e in experiments],
        points=points,
        snapshots=snapshots.to_dict("records"),
        figures=figs,
        references=references,
        generated=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        config_path=config_path,
        versions=sorted({p["provenance"]["served"] or p["provenance"]["configured"] or ""
                         for p in points} - {""}),
        methods=sorted({str(m) for m in snapshots["method"]}),
        steps_used=sorted({int(s) for s in snapshots["steps_used"].dropna()}),
        tolerance=next((m["config"]["profile"]["log_step_tolerance"] for m in manifests
                        if m.get("config")), None),
        detail=detail,
        eplb=[{"experiment": e.name, "rows": eplb_comparison(e),
               "balance": e.expert_balance} for e in experiments
              if eplb_comparison(e) or e.expert_balance],
    )


def write_figures(directory: str | os.PathLike, figs: dict[str, str]) -> None:
    """The plots as SVG files too (the Snakemake report bundle links them)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, svg in figs.items():
        write_text(directory / f"{name}.svg",
                   '<?xml version="1.0" encoding="utf-8"?>\n' + svg.replace(
                       "<svg ", '<svg xmlns="http://www.w3.org/2000/svg" ', 1)
                   if "xmlns=" not in svg.split(">", 1)[0] else svg)


def write(out: str | os.PathLike, csvs: Sequence[str | os.PathLike], *,
          references: Sequence[dict], config_path: str | None = None,
          figures_dir: str | os.PathLike | None = None) -> dict:
    """The experiment page (one CSV) or the grid page (one CSV per experiment)."""
    out = Path(out)
    grid = len(csvs) > 1
    experiments = []
    for csv in csvs:
        experiments.append(load_experiment(csv, page_dir=out.parent))
    names = ", ".join(e.name for e in experiments)
    figs = figures(experiments, references, emulated=is_emulated(experiments),
                   detail=not grid)
    page = render(experiments, title=f"Decode throughput: {names}", figs=figs,
                  references=references, config_path=config_path, detail=not grid)
    if figures_dir is not None:
        write_figures(figures_dir, figs)
    write_text(out, page)
    return {"out": str(out), "bytes": len(page.encode()), "experiments": len(experiments)}
