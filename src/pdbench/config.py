"""Configuration: schema validation with defaults, semantic checks, and the experiment grid.

The JSON schema (``schemas/config.schema.yaml``) is the single place where keys, types
and defaults are declared; ``workflow/schemas/config.schema.yaml`` links to it.
What the grid derives from the configuration (points, node and GPU counts, the fill
target) is in :mod:`pdbench.grid`, re-exported here.
"""

from __future__ import annotations

import copy
import math
import os
import re
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
    expert_recorder,
    find_point,
    grid_points,
    prefill_server_args,
    server_neighbours,
    servers_home,
    sharing_groups,
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

    base = jsonschema.Draft202012Validator
    # JSON Schema counts 48.0 as an integer; a grid of [48.0] would name its experiment
    # "ep48.0" and pass floats where SGLang expects integers. Integers are ints here.
    checker = base.TYPE_CHECKER.redefine(
        "integer", lambda _, value: isinstance(value, int) and not isinstance(value, bool))
    return _with_defaults(jsonschema.validators.extend(base, type_checker=checker))


# Control characters have no place in a config value or key: a trailing newline passes
# a schema pattern ending in $ and would end a line of a rendered script early.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def is_secret_name(name: str) -> bool:
    """Environment names that carry credentials (HF_TOKEN, WANDB_API_KEY, AWS_SECRET_...):
    given as plain values they would be copied into results/ and launcher scripts;
    site.secret_env passes them by name. Judged by name parts, so SGLang's own
    SGLANG_PER_TOKEN_GROUP_... or ..._TOKENS_PER_RANK are not credentials."""
    parts = name.upper().split("_")
    return (parts[-1] in {"TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIALS", "APIKEY"}
            or len(parts) > 1 and parts[-1] == "KEY"
            and parts[-2] in {"API", "ACCESS", "SECRET", "PRIVATE", "AUTH"}
            or bool({"SECRET", "PASSWORD", "PASSWD"} & set(parts)))


def _check_values(node: Any, path: tuple = ()) -> None:
    """Every key a string without control characters; every value finite and clean."""
    key = _key_path(path)
    if isinstance(node, dict):
        for name, value in node.items():
            if not isinstance(name, str):
                raise ConfigError(f"config key {key}: key {name!r} is not a string")
            if _CONTROL.search(name):
                raise ConfigError(f"config key {key}: key {name!r} contains a control "
                                  "character (newline, tab, NUL, ...)")
            _check_values(value, (*path, name))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _check_values(value, (*path, i))
    elif isinstance(node, float) and not math.isfinite(node):
        raise ConfigError(f"config key {key}: {node} is not a finite number")
    elif isinstance(node, str) and _CONTROL.search(node):
        raise ConfigError(f"config key {key}: {node!r} contains a control character "
                          "(newline, tab, NUL, ...)")


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
    if raw is not None and not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: the top level must be a mapping of config keys, "
                          f"not {type(raw).__name__}")
    cfg = copy.deepcopy(dict(raw or {}))
    try:
        _check_values(cfg)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
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
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    text = decode_text(data, path)
    if _stamp_path(path).exists() and _stamp_path(path).read_text() == _stamp(text):
        import json

        return json.loads(text)
    return validate(parse_yaml(text, path), source=str(path))


def check_file(path: str | os.PathLike) -> None:
    """A config file as pdbench reads it (UTF-8, YAML, a mapping, no key twice), for
    files another reader merges (Snakemake's configfile and --configfile)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    raw = parse_yaml(decode_text(data, path), path)
    if raw is not None and not isinstance(raw, Mapping):
        raise ConfigError(f"config file {path}: the top level must be a mapping of config "
                          f"keys, not {type(raw).__name__}")


def decode_text(data: bytes, path: str | os.PathLike) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte "
                          f"0x{data[exc.start]:02x} at offset {exc.start})") from None


def parse_yaml(text: str, path: str | os.PathLike) -> Any:
    """YAML as a config means it: a key given twice in one mapping is an error (PyYAML
    keeps the last one silently, which drops grid points without a word)."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: "
                          + " ".join(str(exc).split())) from None


class _UniqueKeyLoader(yaml.SafeLoader):
    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key; the base class reports it
                break
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"found key {key!r} twice (first on line {seen[key] + 1})",
                    key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)




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
    from .routers import check_config as check_router

    check_config(cfg, DERIVED_SERVER_ARGS)
    check_router(cfg)
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
    container = site["container"]
    if container["runtime"] == "none":
        for name in ("extra_args", "mounts"):
            if container[name]:
                raise ConfigError(
                    f"config key site.container.{name}: set, but site.container.runtime "
                    "is 'none' (no container), so it would be ignored; remove it or set "
                    "the runtime (pyxis, apptainer)")
    _check_ports(cfg["ports"])
    _check_secrets(cfg)
    if ("static" in grid["eplb"] and "none" not in grid["eplb"]
            and not cfg["eplb"]["static"]["init_expert_location"]):
        raise ConfigError(
            "config key eplb.static.init_expert_location: grid.eplb has 'static', which "
            "starts decode with --init-expert-location, and no 'none' point whose run "
            "records the expert distribution: add 'none' to grid.eplb or give a recorded "
            "expert-distribution file")
    if isinstance(cfg["fill"]["sleep_s"], str) and cfg["fill"]["sleep_s"] != "auto":
        raise ConfigError("config key fill.sleep_s: must be a number of seconds or 'auto'")
    if isinstance(cfg["fill"]["sleep_s"], (int, float)) and not 0 < cfg["fill"]["sleep_s"] <= 600:
        raise ConfigError("config key fill.sleep_s: must be > 0 and at most 600 seconds "
                          "per forward, or 'auto'")
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




def _check_ports(ports: Mapping) -> None:
    """The fixed ports of the plan (a server node's HTTP, bootstrap and dist-init ports,
    the router's and its Prometheus port next to it) never collide on one host."""
    used = {"ports.http": ports["http"], "ports.bootstrap": ports["bootstrap"],
            "ports.dist_init": ports["dist_init"], "ports.router": ports["router"],
            "ports.router + 1 (the router's Prometheus port)": ports["router"] + 1}
    seen: dict[int, str] = {}
    for key, port in used.items():
        if port in seen:
            raise ConfigError(f"config key {key.split(' ')[0]}: port {port} is also "
                              f"{seen[port]}; every port of the plan must differ")
        seen[port] = key


def _check_secrets(cfg: Mapping) -> None:
    """Credentials pass by name (site.secret_env), never as values written to results/."""
    sections = [("site.env", cfg["site"]["env"])] + [
        (f"env.{role}", cfg["env"][role]) for role in ("common", "prefill", "decode")] + [
        ("workload.env", cfg["workload"]["env"])]
    for key, env in sections:
        for name in env:
            if is_secret_name(name):
                raise ConfigError(
                    f"config key {key}.{name}: looks like a credential given as a plain "
                    "value, which would be copied into results/ and the launcher scripts; "
                    f"remove it, export {name} where Snakemake runs and list it in "
                    "site.secret_env (passed by name only)")
