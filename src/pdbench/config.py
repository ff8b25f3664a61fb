"""Configuration: schema validation with defaults, semantic checks, and the experiment grid.

The JSON schema (``schemas/config.schema.yaml``) is the single place where keys, types
and defaults are declared; ``workflow/schemas/config.schema.yaml`` links to it.
What the grid derives from the configuration (points, node and GPU counts, the fill
target) is in :mod:`pdbench.grid`, re-exported here.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError
from .grid import (  # noqa: F401 - the grid is part of what a config means
    DERIVED_SERVER_ARGS,
    EPLB_MODES,
    Point,
    allocation_neighbours,
    decode_server_args,
    experiments,
    find_point,
    grid_points,
    prefill_server_args,
)

@cache
def _schema_text() -> str:
    return resources.files("pdbench").joinpath("schemas/config.schema.yaml").read_text()


@cache
def schema() -> dict:
    return yaml.safe_load(_schema_text())


def _with_defaults(validator_class):
    """A validator class that fills ``default`` values while it validates."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, subschema):
        if isinstance(instance, dict):
            for name, prop in properties.items():
                if "default" in prop and name not in instance:
                    instance[name] = copy.deepcopy(prop["default"])
        yield from validate_properties(validator, properties, instance, subschema)

    import jsonschema

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


@cache
def _validator_class():
    # jsonschema costs ~40 ms to import; stages that read the resolved config (which
    # was validated when the workflow wrote it) do not need it.
    import jsonschema

    return _with_defaults(jsonschema.Draft202012Validator)


def _key_path(path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _schema_error_message(error) -> str:
    key = _key_path(error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        hint = f"; allowed keys: {', '.join(allowed)}" if allowed else ""
        return f"config key {key}: unknown key(s) {', '.join(map(repr, extra))}{hint}"
    return f"config key {key}: {error.message}"


def validate(raw: Mapping[str, Any] | None, *, source: str = "config",
             workdir: str | os.PathLike | None = None) -> dict:
    """Validate ``raw`` against the schema, fill defaults and run semantic checks.

    ``workdir`` is where the workflow runs (relative paths of the config and the
    results directory are under it; default: the current directory). Returns a new
    dict; ``raw`` is not modified. Raises ConfigError naming the key.
    """
    cfg = copy.deepcopy(dict(raw or {}))
    errors = list(_validator_class()(schema()).iter_errors(cfg))
    if errors:
        import jsonschema

        # best_match prefers the most specific error, which names the deepest key.
        best = jsonschema.exceptions.best_match(errors)
        raise ConfigError(f"{source}: {_schema_error_message(best)}")
    try:
        _check_semantics(cfg)
        from .launch_checks import check as check_launch

        check_launch(cfg, grid_points(cfg), workdir)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return cfg


def load(path: str | os.PathLike) -> dict:
    """Read a YAML config file and validate it.

    The resolved config the workflow writes (:func:`write_resolved`) is trusted as long
    as its stamp matches its text and the schema: every stage reads it, and validating it
    again would cost each stage ~60 ms on the way from one stage to the next."""
    path = Path(path)
    try:
        text = path.read_text()
        if _stamp_path(path).exists() and _stamp_path(path).read_text() == _stamp(text):
            import json

            return json.loads(text)
        raw = yaml.safe_load(text)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"config file {path}: the top level must be a mapping")
    return validate(raw, source=str(path))


def write_resolved(cfg: Mapping, path: str | os.PathLike) -> str:
    """Write the validated config as JSON (only when it changed); return the path."""
    import json

    from .layout import write_text

    path = Path(path)
    text = json.dumps(cfg, indent=2, sort_keys=True) + "\n"
    stamp = _stamp_path(path)
    if not path.exists() or path.read_text() != text or not stamp.exists() \
            or stamp.read_text() != _stamp(text):
        write_text(path, text)
        write_text(stamp, _stamp(text))
    return str(path)


def _stamp_path(path: Path) -> Path:
    return path.with_name(f"{path.name}.validated")


def _stamp(text: str) -> str:
    """What a validated config's stamp holds: the digest of its text and of the schema
    it was validated against (a hand edit or a new schema means validating again)."""
    import hashlib

    return hashlib.sha256((_schema_text() + "\0" + text).encode()).hexdigest() + "\n"


def _check_semantics(cfg: dict) -> None:
    from .dialects import check_config  # every server_args entry spelled for the release

    check_config(cfg)
    site, grid = cfg["site"], cfg["grid"]
    gpn = site["gpus_per_node"]
    for i, ep in enumerate(grid["ep_sizes"]):
        if ep % gpn:
            raise ConfigError(
                f"config key grid.ep_sizes[{i}]: EP {ep} is not a multiple of "
                f"site.gpus_per_node ({gpn}); decode must fill whole nodes"
            )
    if site["container"]["runtime"] != "none" and not site["container"]["image"]:
        raise ConfigError(
            "config key site.container.image: required when site.container.runtime is "
            f"{site['container']['runtime']!r}"
        )
    if isinstance(cfg["fill"]["sleep_s"], str) and cfg["fill"]["sleep_s"] != "auto":
        raise ConfigError("config key fill.sleep_s: must be a number of seconds or 'auto'")
    if isinstance(cfg["fill"]["sleep_s"], (int, float)) and cfg["fill"]["sleep_s"] <= 0:
        raise ConfigError("config key fill.sleep_s: must be > 0")
    rate = cfg["workload"]["request_rate"]
    if isinstance(rate, str) and rate != "inf" or isinstance(rate, (int, float)) and rate <= 0:
        raise ConfigError("config key workload.request_rate: must be a positive number or 'inf'")
    for role in ("common", "prefill", "decode"):
        for key in cfg["server_args"][role]:
            if key in DERIVED_SERVER_ARGS:
                raise ConfigError(
                    f"config key server_args.{role}.{key}: set by the workflow from the grid "
                    "point and node plan; remove it (see README, 'What the workflow derives')"
                )
    mrr = decode_server_args(cfg).get("max-running-requests")
    if not isinstance(mrr, int) or isinstance(mrr, bool) or mrr < 1:
        raise ConfigError(
            "config key server_args.decode.max-running-requests: a positive integer is "
            "required (the fill target per DP rank is max-running-requests / dp)"
        )
    for point in grid_points(cfg):
        if mrr < point.decode_dp:
            raise ConfigError(
                f"config key server_args.decode.max-running-requests: {mrr} is less than the "
                f"decode DP size {point.decode_dp} of point {point.experiment}/{point.name}"
            )
        if site["max_nodes"] is not None and point.total_nodes > site["max_nodes"]:
            raise ConfigError(
                f"config key site.max_nodes: point {point.experiment}/{point.name} needs "
                f"{point.total_nodes} nodes ({point.prefill_groups} prefill group(s) x "
                f"{point.nodes_per_prefill_group} + {point.decode_nodes} decode) but only "
                f"{site['max_nodes']} are available"
            )


