"""Expert-load balance of an expert-distribution dump: how evenly the routed tokens fall on GPUs.

This module is the one place that reads expert-distribution dumps and computes balance from
them (definitions and sources: docs/sglang-formats.md, *Expert-load balance*).

What it reads
-------------
:func:`read_dump` takes one file and returns an :class:`ExpertDump`, the same structure for
every format:

* SGLang's ``stat`` / ``stat_approx`` dump, ``expert_distribution_recorder_{time}.pt``
  (rank 0 writes it, counts all-reduced): a dict with ``logical_count``
  ``[buffer, layers, logical experts]`` (one row per recorded forward pass; files that a
  script summed hold one row), ``rank``, and from v0.5.2 ``average_utilization_rate_over_window``
  (a float, or None unless the server ran with the balancedness metrics and an EPLB threshold).
* SGLang's ``per_pass`` / ``per_token`` dump, ``expert_distribution_recorder_{time}_{rank}.pt``
  (every rank writes one): ``records``, one dict per forward pass with ``forward_pass_id`` and
  ``global_physical_count`` ``[layers, physical experts]`` (``per_token`` records of releases
  before that key hold ``topk_ids_of_layer`` ``[layers, tokens, top-k]`` physical ids, ``-1``
  unused), and ``last_physical_to_logical_map`` ``[layers, physical experts]``.
* JSON: the emulator's dump (``pdbench.emulator.experts``: ``logical_count`` as above) and the
  JSON that ``--init-expert-location`` takes (``logical_count``, 2-D or 3-D, and/or
  ``physical_to_logical_map``); an optional ``ep_size`` key gives the EP size.

Torch is not needed. A ``.pt`` is the zip archive ``torch.save`` writes: ``data.pkl`` plus one
raw little- or big-endian (``byteorder``) buffer per storage. The built-in reader unpickles
``data.pkl`` with an unpickler that resolves only the names a tensor dump needs (tensor
rebuild functions, storage and dtype names, ``OrderedDict``) and refuses any other global, so
a file cannot run code; tensors become numpy arrays. A file it cannot read (a legacy
non-zip torch file, a global outside that list) is read with ``torch.load(weights_only=True)``
when torch is installed, and is otherwise an error naming the file and saying to install
torch. So the orchestrator's environment (numpy, no torch) reads every dump the SGLang
releases write, on the login node, after the run.

What it computes
----------------
:func:`balance` places the counts on GPUs and computes, per MoE layer, SGLang's
*balancedness* (``compute_utilization_rate``): ``(mean GPU load + 1e-5) / (max GPU load +
1e-5)``, where a GPU's load is the sum of the counts of the physical experts it hosts and GPU
``g`` hosts physical experts ``[g*k, (g+1)*k)`` (``compute_gpu_physical_count``); and
``max/mean``, its inverse without the epsilon. The overall balancedness is the mean over all
layers, as SGLang averages it (a layer without tokens, e.g. DeepSeek's first three dense
layers, counts as 1.0 there); ``balancedness_routed_layers`` averages only layers that routed
tokens. Counts are placed by, in order of preference:

1. the physical counts the dump recorded (``per_pass`` / ``per_token``);
2. a physical-to-logical map (the dump's or ``placement``'s): a logical expert's count is
   split evenly over its replicas, as SGLang's EPLB algorithm models the load of a replica
   (``tokens_per_phy = tokens_per_mlog / mlogcnt``, eplb_algorithms/deepseek.py);
3. the trivial placement, SGLang's ``--init-expert-location trivial``
   (``ExpertLocationMetadata.init_trivial``): physical expert ``i`` holds logical expert
   ``i mod logical experts``, so ``--ep-num-redundant-experts R`` (``redundant``) adds
   replicas of experts ``0..R-1``; the result says it was assumed.

Passes: the balancedness of the summed counts is the window's; with several recorded passes
the result also gives ``per_pass_balancedness``, the mean over passes with tokens of each
pass's balancedness, which is what SGLang's ``last_N_average_balancedness`` log field and
``average_utilization_rate_over_window`` average.
"""

from __future__ import annotations

import io
import json
import math
import pickle
import zipfile
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError

EPSILON = 1e-5  # SGLang's compute_utilization_rate adds it to mean and max
TORCH_HINT = "install torch (pip install torch) to read it"

# torch storage class name -> numpy dtype (torch.save names the typed storage of each tensor)
_STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
    "BFloat16Storage": "bfloat16",
}
# torch dtype name -> numpy dtype (_rebuild_tensor_v3 names the dtype itself)
_TORCH_DTYPES = {
    "float64": np.float64, "float32": np.float32, "float16": np.float16, "int64": np.int64,
    "int32": np.int32, "int16": np.int16, "int8": np.int8, "uint8": np.uint8,
    "uint16": np.uint16, "uint32": np.uint32, "uint64": np.uint64, "bool": np.bool_,
    "bfloat16": "bfloat16",
}


class _Unreadable(Exception):
    """The built-in reader cannot read this file; torch might."""


# --------------------------------------------------------------------------------------------
# torch.save archives without torch


@dataclass(frozen=True)
class _DType:
    numpy: object  # a numpy dtype, or "bfloat16"


@dataclass(frozen=True)
class _Storage:
    data: np.ndarray  # one-dimensional, already in the storage's dtype


def _as_numpy(raw: bytes, dtype, big_endian: bool) -> np.ndarray:
    if dtype == "bfloat16":  # the high half of a float32
        halves = np.frombuffer(raw, dtype=">u2" if big_endian else "<u2").astype(np.uint32)
        return (halves << 16).view(np.float32)
    dt = np.dtype(dtype)
    return np.frombuffer(raw, dtype=dt.newbyteorder(">" if big_endian else "<"))


def _rebuild_tensor(storage, offset, size, stride, *_rest) -> np.ndarray:
    if not isinstance(storage, _Storage):
        raise _Unreadable("a tensor without a storage")
    data = storage.data
    size, stride = tuple(size), tuple(stride)
    if any(s < 0 for s in size + stride) or offset < 0:
        raise _Unreadable("a tensor with a negative size or stride")
    last = offset + sum((n - 1) * s for n, s in zip(size, stride) if n > 0)
    if (0 not in size) and last >= len(data):
        raise _Unreadable("a tensor larger than its storage")
    if math.prod(size) > max(len(data), 1):  # a broadcast view; leave it to torch
        raise _Unreadable("a tensor with more elements than its storage")
    if 0 in size:
        return np.zeros(size, dtype=data.dtype)
    view = np.lib.stride_tricks.as_strided(
        data[offset:], shape=size, strides=[s * data.itemsize for s in stride])
    return np.array(view)  # own the memory, native byte order


def _rebuild_tensor_v3(storage, offset, size, stride, requires_grad, hooks, dtype, *_rest):
    if not isinstance(dtype, _DType) or not isinstance(storage, _Storage):
        raise _Unreadable("an untyped storage without a dtype")
    raw = storage.data.tobytes()
    big = storage.data.dtype.byteorder == ">"
    return _rebuild_tensor(_Storage(_as_numpy(raw, dtype.numpy, big)), offset, size, stride)


class _SafeUnpickler(pickle.Unpickler):
    """Unpickles ``data.pkl`` of a torch archive, resolving only what a tensor dump uses."""

    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str, big_endian: bool):
        super().__init__(io.BytesIO(data))
        self._archive, self._prefix, self._big = archive, prefix, big_endian

    def find_class(self, module: str, name: str):
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_tensor_v3":
            return _rebuild_tensor_v3
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        if module == "torch" and name in _STORAGE_DTYPES:
            return _DType(_STORAGE_DTYPES[name])
        if module == "torch.storage" and name == "UntypedStorage":
            return _DType(np.uint8)
        if module == "torch" and name in _TORCH_DTYPES:
            return _DType(_TORCH_DTYPES[name])
        raise _Unreadable(f"it names {module}.{name}, which the built-in reader does not load")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _DType)):
            raise _Unreadable(f"unknown persistent id {pid!r:.60}")
        _, dtype, key, _location, _numel = pid
        try:
            raw = self._archive.read(f"{self._prefix}/data/{key}")
        except KeyError:
            raise _Unreadable(f"storage {key} is missing from the archive") from None
        try:
            return _Storage(_as_numpy(raw, dtype.numpy, self._big))
        except ValueError as exc:
            raise _Unreadable(f"storage {key}: {exc}") from None


def _load_torch_archive(path: Path) -> object:
    """The object a ``torch.save`` zip archive holds, tensors as numpy arrays."""
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
            if len(pickles) != 1:
                raise _Unreadable("no single data.pkl inside")
            prefix = pickles[0][: -len("/data.pkl")]
            try:
                order = archive.read(f"{prefix}/byteorder").decode().strip()
            except KeyError:
                order = "little"  # archives from before torch wrote the byte order
            try:
                return _SafeUnpickler(archive.read(pickles[0]), archive, prefix,
                                      order == "big").load()
            except (_Unreadable, OSError):
                raise
            except Exception as exc:  # a damaged pickle fails in many ways; torch may know
                raise _Unreadable(f"data.pkl does not unpickle ({exc})") from None
    except (zipfile.BadZipFile, EOFError, RuntimeError, NotImplementedError, zlib.error) as exc:
        with open(path, "rb") as f:
            if f.read(2) == b"PK":  # a damaged archive, which torch cannot read either
                raise InputError(f"{path}: damaged zip archive ({exc})") from None
        raise _Unreadable("not a zip archive: torch's legacy format?") from None


def _load_with_torch(path: Path, why: str) -> object:
    try:
        import torch
    except ImportError:
        raise InputError(f"{path}: the built-in .pt reader cannot read it ({why}); "
                         f"{TORCH_HINT}") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types; the message names the file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path}: torch.load cannot read it ({first})") from None

    def to_numpy(x):
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu()
            return (t.float() if t.dtype == torch.bfloat16 else t).numpy()
        if isinstance(x, dict):
            return {k: to_numpy(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [to_numpy(v) for v in x]
        return x

    return to_numpy(obj)


def load_pt(path: str | Path) -> tuple[object, str]:
    """``(object, reader)`` of a ``torch.save`` file; reader is ``"built-in"`` or ``"torch"``."""
    path = Path(path)
    try:
        return _load_torch_archive(path), "built-in"
    except _Unreadable as exc:
        return _load_with_torch(path, str(exc)), "torch"
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from None


# --------------------------------------------------------------------------------------------
# One structure for every dump


@dataclass(frozen=True)
class ExpertDump:
    """What a dump says, whatever its format.

    ``logical_count`` is ``[passes, layers, logical experts]`` (float64, non-negative);
    ``physical_count`` is ``[passes, layers, physical experts]`` where the dump recorded it
    (``per_pass``/``per_token``), else None; ``physical_to_logical_map`` is
    ``[layers, physical experts]`` or None; ``ep_size`` is None unless the file says it.
    """

    path: str
    format: str
    reader: str
    logical_count: np.ndarray
    physical_count: np.ndarray | None
    physical_to_logical_map: np.ndarray | None
    ep_size: int | None
    average_utilization_rate_over_window: float | None

    @property
    def layers(self) -> int:
        return self.logical_count.shape[1]

    @property
    def logical_experts(self) -> int:
        return self.logical_count.shape[2]


def _numbers(path: Path, value, key: str, dims: tuple[int, ...]) -> np.ndarray:
    """``value`` as a finite, non-empty float array of one of ``dims`` dimensions."""
    try:
        arr = np.asarray(value)
        if arr.dtype == object or arr.dtype.kind not in "iuf":
            raise ValueError
        arr = arr.astype(np.float64)
    except (ValueError, TypeError):
        raise InputError(f"{path}: {key} is not an array of numbers") from None
    if arr.ndim not in dims:
        raise InputError(f"{path}: {key} has {arr.ndim} dimensions, expected "
                         + " or ".join(str(d) for d in dims))
    if arr.size == 0:
        raise InputError(f"{path}: {key} is empty (shape {list(arr.shape)})")
    if not np.isfinite(arr).all():
        raise InputError(f"{path}: {key} holds NaN or infinite values")
    return arr


def _counts(path: Path, value, key: str, dims: tuple[int, ...]) -> np.ndarray:
    arr = _numbers(path, value, key, dims)
    if (arr < 0).any():
        raise InputError(f"{path}: {key} holds negative counts")
    return arr


def _mapping(path: Path, value, key: str) -> np.ndarray:
    arr = _numbers(path, value, key, (2,))
    if (arr != np.round(arr)).any() or (arr < 0).any():
        raise InputError(f"{path}: {key} holds values that are not expert ids (integers >= 0)")
    return arr.astype(np.int64)


def _stat_layout(path: Path, doc: dict, fmt: str, reader: str) -> ExpertDump:
    count = _counts(path, doc["logical_count"], "logical_count", (2, 3))
    if count.ndim == 2:  # --init-expert-location accepts [layers, experts] too
        count = count[np.newaxis]
    mapping = None
    if doc.get("physical_to_logical_map") is not None:
        mapping = _mapping(path, doc["physical_to_logical_map"], "physical_to_logical_map")
    return ExpertDump(str(path), fmt, reader, count, None, mapping, _ep_of(path, doc),
                      _rate_of(path, doc))


def _ep_of(path: Path, doc: dict) -> int | None:
    ep = doc.get("ep_size")
    if ep is None:
        return None
    if isinstance(ep, bool) or not isinstance(ep, int) or ep < 1:
        raise InputError(f"{path}: ep_size must be a positive integer, got {ep!r}")
    return ep


def _rate_of(path: Path, doc: dict) -> float | None:
    rate = doc.get("average_utilization_rate_over_window")
    if rate is None:
        return None
    try:
        rate = float(np.asarray(rate).reshape(-1)[0])
    except (TypeError, ValueError, IndexError):
        raise InputError(f"{path}: average_utilization_rate_over_window is not a number") from None
    return rate if math.isfinite(rate) else None


def _records_layout(path: Path, doc: dict, reader: str) -> ExpertDump:
    records = doc["records"]
    if not isinstance(records, list) or not records:
        raise InputError(f"{path}: records is empty (no forward pass was recorded)")
    mapping = _mapping(path, doc.get("last_physical_to_logical_map"),
                       "last_physical_to_logical_map")
    layers, physical = mapping.shape
    by_pass: dict[int, np.ndarray] = {}
    for i, rec in enumerate(records):
        key = f"records[{i}]"
        if not isinstance(rec, dict):
            raise InputError(f"{path}: {key} is not a dict")
        if rec.get("global_physical_count") is not None:
            count = _counts(path, rec["global_physical_count"],
                            f"{key}.global_physical_count", (2,))
        elif rec.get("topk_ids_of_layer") is not None:
            ids = np.asarray(rec["topk_ids_of_layer"])
            if ids.dtype.kind not in "iu" or ids.ndim != 3 or (ids.size and ids.min() < -1):
                raise InputError(f"{path}: {key}.topk_ids_of_layer is not a [layers, tokens, "
                                 "top-k] array of expert ids (-1 unused)")
            if ids.shape[0] != layers or (ids.size and ids.max() >= physical):
                raise InputError(f"{path}: {key}.topk_ids_of_layer does not fit the map "
                                 f"({layers} layers, {physical} physical experts)")
            count = np.zeros((layers, physical))
            for layer in range(layers):
                chosen = ids[layer][ids[layer] >= 0]
                count[layer] = np.bincount(chosen, minlength=physical)
        else:
            raise InputError(f"{path}: {key} has neither global_physical_count nor "
                             "topk_ids_of_layer")
        if count.shape != (layers, physical):
            raise InputError(f"{path}: {key} has shape {list(count.shape)}, the map "
                             f"{[layers, physical]}")
        pass_id = rec.get("forward_pass_id", i)
        if isinstance(pass_id, bool) or not isinstance(pass_id, int):
            raise InputError(f"{path}: {key}.forward_pass_id is not an integer")
        by_pass[pass_id] = by_pass.get(pass_id, 0) + count
    physical_count = np.stack([by_pass[k] for k in sorted(by_pass)])
    logical = _to_logical(physical_count, mapping)
    return ExpertDump(str(path), "sglang .pt (per_pass/per_token records)", reader, logical,
                      physical_count, mapping, _ep_of(path, doc), None)


def _to_logical(physical_count: np.ndarray, mapping: np.ndarray) -> np.ndarray:
    """Per-logical-expert counts ``[passes, layers, logical]``, SGLang's scatter-add."""
    logical_experts = int(mapping.max()) + 1
    logical = np.zeros(physical_count.shape[:2] + (logical_experts,))
    for layer in range(mapping.shape[0]):
        for p in range(physical_count.shape[0]):
            np.add.at(logical[p, layer], mapping[layer], physical_count[p, layer])
    return logical


def _from_document(path: Path, doc, fmt: str, reader: str) -> ExpertDump:
    if not isinstance(doc, dict):
        raise InputError(f"{path}: not an expert-distribution dump (holds a "
                         f"{type(doc).__name__}, not a dict)")
    if "records" in doc:
        return _records_layout(path, doc, reader)
    if "logical_count" in doc:
        return _stat_layout(path, doc, fmt, reader)
    if "physical_to_logical_map" in doc:
        raise InputError(f"{path}: holds a physical_to_logical_map but no counts "
                         "(a placement, not a dump; pass it as the placement)")
    raise InputError(f"{path}: not an expert-distribution dump (no logical_count or records; "
                     f"keys: {', '.join(map(str, list(doc)[:6])) or 'none'})")


def _read_json(path: Path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except UnicodeDecodeError:
        raise InputError(f"{path}: not an expert-distribution dump (neither a torch .pt "
                         "archive nor JSON)") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not an expert-distribution dump (not a torch .pt archive, "
                         f"and invalid JSON: {exc.msg} at line {exc.lineno})") from None


def read_dump(path: str | Path) -> ExpertDump:
    """The counts (and map, EP size where present) of one dump; InputError naming the file."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, not a dump") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if not head:
        raise InputError(f"{path}: empty file")
    if head.startswith(b"PK") or path.suffix == ".pt":
        doc, reader = load_pt(path)
        return _from_document(path, doc, "sglang .pt (stat)", reader)
    doc = _read_json(path)
    fmt = "emulator JSON" if isinstance(doc, dict) and doc.get("emulator") else "JSON"
    return _from_document(path, doc, fmt, "json")


def read_placement(path: str | Path) -> np.ndarray:
    """The physical-to-logical map ``[layers, physical experts]`` a file holds.

    A JSON or ``.pt`` file with ``physical_to_logical_map`` (what ``--init-expert-location``
    takes) or a ``per_pass``/``per_token`` dump (its ``last_physical_to_logical_map``).
    """
    path = Path(path)
    try:
        head = path.read_bytes()[:4]
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from None
    doc = load_pt(path)[0] if head.startswith(b"PK") or path.suffix == ".pt" else _read_json(path)
    if isinstance(doc, dict):
        for key in ("physical_to_logical_map", "last_physical_to_logical_map"):
            if doc.get(key) is not None:
                return _mapping(path, doc[key], key)
    raise InputError(f"{path}: holds no physical_to_logical_map")


# --------------------------------------------------------------------------------------------
# Balance


def _trivial_map(layers: int, logical: int, redundant: int) -> np.ndarray:
    """SGLang's trivial placement: physical expert i holds logical expert i mod logical."""
    return np.tile(np.arange(logical + redundant) % logical, (layers, 1))


def _physical_counts(dump: ExpertDump, mapping: np.ndarray | None,
                     redundant: int | None) -> tuple[np.ndarray, str]:
    """``([passes, layers, physical], how)``: the counts on physical experts."""
    path = dump.path
    if mapping is None and dump.physical_count is not None:
        mapping, how = dump.physical_to_logical_map, "recorded physical counts"
        counts = dump.physical_count
    else:
        counts = None
        if mapping is not None:
            how = "the given placement's physical_to_logical_map"
        elif dump.physical_to_logical_map is not None:
            mapping, how = dump.physical_to_logical_map, "the dump's physical_to_logical_map"
        else:
            mapping = _trivial_map(dump.layers, dump.logical_experts, redundant or 0)
            how = ("trivial (assumed: the dump has no physical-to-logical map; physical "
                   f"expert i holds logical expert i mod {dump.logical_experts}, "
                   f"{redundant or 0} redundant, contiguous over the EP ranks)")
    if redundant is not None and mapping.shape[1] != dump.logical_experts + redundant:
        raise InputError(f"{path}: the placement has {mapping.shape[1]} physical experts, not "
                         f"{dump.logical_experts} logical + {redundant} redundant")
    if counts is not None:
        return counts, how
    if mapping.shape[0] != dump.layers:
        raise InputError(f"{path}: the physical_to_logical_map has {mapping.shape[0]} layers, "
                         f"the counts {dump.layers}")
    if mapping.min() < 0 or mapping.max() >= dump.logical_experts:
        raise InputError(f"{path}: the physical_to_logical_map names experts outside "
                         f"0..{dump.logical_experts - 1}")
    replicas = np.zeros((dump.layers, dump.logical_experts))
    for layer in range(dump.layers):
        replicas[layer] = np.bincount(mapping[layer], minlength=dump.logical_experts)
    orphan = (replicas == 0) & (dump.logical_count.sum(axis=0) > 0)
    if orphan.any():
        layer, expert = (int(i[0]) for i in np.nonzero(orphan))
        raise InputError(f"{path}: logical expert {expert} of layer {layer} routed tokens but "
                         "has no physical replica in the physical_to_logical_map")
    share = dump.logical_count / np.maximum(replicas, 1)  # a replica's even share
    physical = np.take_along_axis(share, np.broadcast_to(mapping, share.shape[:1]
                                                         + mapping.shape), axis=2)
    if (replicas > 1).any():
        how += " (each logical expert's count split evenly over its replicas)"
    return physical, how


def _layer_stats(gpu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """SGLang's balancedness and max/mean per layer of ``[..., layers, gpus]`` loads."""
    mean, peak = gpu.mean(axis=-1), gpu.max(axis=-1)
    balancedness = (mean + EPSILON) / (peak + EPSILON)
    with np.errstate(divide="ignore", invalid="ignore"):
        max_over_mean = np.where(mean > 0, peak / np.where(mean > 0, mean, 1), np.nan)
    return balancedness, max_over_mean


def _num(x) -> float | None:
    x = float(x)
    return round(x, 6) if math.isfinite(x) else None


def balance(dump: ExpertDump, ep: int | None = None, placement: np.ndarray | None = None,
            redundant: int | None = None) -> dict:
    """Per-layer and overall balance of ``dump`` over ``ep`` GPUs (default: the dump's).

    ``placement`` (a physical-to-logical map) replaces the dump's own; ``redundant`` is
    SGLang's ``--ep-num-redundant-experts`` for the trivial placement (and, given with a map,
    checked against it).
    """
    path = dump.path
    ep = ep if ep is not None else dump.ep_size
    if ep is None:
        raise InputError(f"{path}: the dump does not say the EP size (number of GPUs); "
                         "give it (pdbench balance --ep N)")
    if isinstance(ep, bool) or not isinstance(ep, int) or ep < 1:
        raise InputError(f"{path}: the EP size must be a positive number of GPUs, got {ep!r}")
    if dump.logical_count.sum() <= 0:
        raise InputError(f"{path}: the dump counts no routed tokens (was the recorder "
                         "started before the load?)")
    if redundant is not None and (isinstance(redundant, bool) or not isinstance(redundant, int)
                                  or redundant < 0):
        raise InputError(f"{path}: the number of redundant experts must be >= 0, "
                         f"got {redundant!r}")
    physical, placed = _physical_counts(dump, placement, redundant)
    slots = physical.shape[2]
    if slots % ep:
        hint = ("" if dump.physical_to_logical_map is not None or placement is not None
                else "; with redundant experts, give their number")
        raise InputError(f"{path}: {slots} physical experts do not divide over {ep} GPUs "
                         f"(EP {ep} must divide the number of physical experts{hint})")
    per_gpu = slots // ep
    gpu = physical.reshape(physical.shape[0], dump.layers, ep, per_gpu).sum(axis=-1)
    window = gpu.sum(axis=0)  # [layers, gpus]
    balancedness, max_over_mean = _layer_stats(window)
    routed = window.sum(axis=-1) > 0
    worst = int(np.argmin(np.where(routed, balancedness, np.inf)))
    result = {
        "file": path,
        "format": dump.format,
        "reader": dump.reader,
        "ep": ep,
        "layers": dump.layers,
        "routed_layers": int(routed.sum()),
        "logical_experts": dump.logical_experts,
        "physical_experts": slots,
        "experts_per_gpu": per_gpu,
        "placement": placed,
        "passes": int((gpu.sum(axis=(1, 2)) > 0).sum()),
        "expert_tokens": _num(physical.sum()),
        "balancedness": _num(balancedness.mean()),
        "balancedness_routed_layers": _num(balancedness[routed].mean()),
        "max_over_mean": _num(max_over_mean[routed].mean()),
        "worst_layer": {"layer": worst, "balancedness": _num(balancedness[worst]),
                        "max_over_mean": _num(max_over_mean[worst])},
        "per_pass_balancedness": None,
        "average_utilization_rate_over_window": dump.average_utilization_rate_over_window,
        "gpu_load": [_num(x) for x in window.sum(axis=0)],
        "per_layer": [
            {"layer": layer, "tokens": _num(window[layer].sum()),
             "balancedness": _num(balancedness[layer]),
             "max_over_mean": _num(max_over_mean[layer]),
             "gpu_load": [_num(x) for x in window[layer]]}
            for layer in range(dump.layers)
        ],
    }
    passes = gpu[gpu.sum(axis=(1, 2)) > 0]
    if len(passes) > 1:
        result["per_pass_balancedness"] = _num(_layer_stats(passes)[0].mean(axis=-1).mean())
    return result


def greedy_placement(dump: ExpertDump, ep: int) -> np.ndarray:
    """A physical-to-logical map ``[layers, physical experts]`` that balances the dump's
    summed counts over ``ep`` GPUs: ``ceil(logical / ep)`` slots per GPU, the spare slots
    replicas of the hottest experts (a replica carries an equal share), then the heaviest
    replica first onto the lightest GPU with room. An estimate of what a rebalance
    achieves, not SGLang's EPLB algorithm; :func:`balance` takes it as ``placement``."""
    counts = dump.logical_count.sum(axis=0)  # [layers, logical]
    logical = counts.shape[1]
    per_gpu = -(-logical // ep)
    mapping = np.zeros((counts.shape[0], ep * per_gpu), dtype=np.int64)
    for layer, load in enumerate(counts):
        replicas = list(range(logical)) + [int(e) for e in np.argsort(-load, kind="stable")
                                           [:ep * per_gpu - logical]]
        copies = np.bincount(replicas, minlength=logical)
        order = sorted(replicas, key=lambda e: -load[e] / copies[e])
        gpu_load, slots = np.zeros(ep), [[] for _ in range(ep)]
        for expert in order:
            gpu = min((g for g in range(ep) if len(slots[g]) < per_gpu),
                      key=lambda g: gpu_load[g])
            slots[gpu].append(expert)
            gpu_load[gpu] += load[expert] / copies[expert]
        mapping[layer] = [e for gpu in slots for e in gpu]
    return mapping


def balance_of_file(path: str | Path, ep: int | None = None,
                    placement: str | Path | None = None, redundant: int | None = None) -> dict:
    """:func:`balance` of the dump at ``path`` (and the placement file, if any)."""
    dump = read_dump(path)
    mapping = read_placement(placement) if placement is not None else None
    return balance(dump, ep, mapping, redundant)


def as_text(result: dict) -> str:
    """The overall and per-layer numbers of a :func:`balance` result, for a terminal."""
    worst = result["worst_layer"]
    lines = [
        f"{result['file']}: {result['format']}, read by {result['reader']}",
        f"  EP {result['ep']}: {result['physical_experts']} physical experts "
        f"({result['experts_per_gpu']} per GPU), {result['logical_experts']} logical, "
        f"{result['routed_layers']} of {result['layers']} layers routed tokens, "
        f"{result['passes']} recorded pass(es)",
        f"  placement: {result['placement']}",
        f"  balancedness (SGLang: mean over layers of mean/max GPU load): "
        f"{result['balancedness']:.4f}",
        f"  balancedness over routed layers: {result['balancedness_routed_layers']:.4f}; "
        f"max/mean GPU load: {result['max_over_mean']:.4f}",
        f"  worst layer: {worst['layer']} (balancedness {worst['balancedness']:.4f}, "
        f"max/mean {worst['max_over_mean']:.4f})",
    ]
    if result["per_pass_balancedness"] is not None:
        lines.append(f"  mean per-pass balancedness: {result['per_pass_balancedness']:.4f}")
    if result["average_utilization_rate_over_window"] is not None:
        lines.append("  SGLang's average_utilization_rate_over_window: "
                     f"{result['average_utilization_rate_over_window']:.4f}")
    lines.append("  layer  balancedness  max/mean  min GPU load  max GPU load")
    for row in result["per_layer"]:
        if not row["tokens"]:
            lines.append(f"  {row['layer']:5d}  (no routed tokens)")
            continue
        lines.append(f"  {row['layer']:5d}  {row['balancedness']:12.4f}  "
                     f"{row['max_over_mean']:8.4f}  {min(row['gpu_load']):12.6g}  "
                     f"{max(row['gpu_load']):12.6g}")
    return "\n".join(lines)
