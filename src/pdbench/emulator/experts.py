"""The expert-distribution recorder and ``--init-expert-location``, emulated.

Recording (``--expert-distribution-recorder-mode``; ``--enable-eplb`` implies ``stat``):
``/start_expert_distribution_record`` resets and starts, ``/stop_…`` stops,
``/dump_…`` writes a file and resets. Without a mode the three endpoints fail with
SGLang's message. The dump is SGLang's ``stat`` dump: ``expert_distribution_recorder_{time.time()}.pt``
in ``$SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR`` (else ``/tmp``), written by node 0 (rank 0),
a ``torch.save`` zip archive of ``{"rank": 0, "logical_count": int32 tensor,
"average_utilization_rate_over_window": None}``. The emulator has no torch: it writes the
archive itself (:func:`torch_archive`: ``data.pkl`` naming ``torch._utils._rebuild_tensor_v2``
and one ``IntStorage``), which ``torch.load(weights_only=True)`` and
:mod:`pdbench.balance` read.

``logical_count`` has SGLang's shape ``[buffer, layers, logical experts]`` with one row per
recorded forward pass, as SGLang's ``_StatAccumulator`` keeps them (all of them with
``--expert-distribution-recorder-buffer-size -1``, else the last that many). A file that
a script summed over the passes, like the runbook author's GB200 EP48 dump
(shifangx/Scripts-SGLang 481e976, shape [1, 61, 256]), holds one row. Counts are tokens x
top-k x a fixed skewed popularity per layer (dense layers count 0), so a dump is
deterministic given the batches.

``--init-expert-location``: ``trivial`` (default), a ``.json`` file, a JSON string, or a
``.pt`` file. JSON must hold ``logical_count`` (2-D or 3-D numbers) or
``physical_to_logical_map``; a ``.pt`` must be a torch zip archive whose pickle names one
of those keys. Anything else is a startup error naming the file.

Imbalance: :func:`moe_imbalance` is the mean over routed layers of max/mean routed tokens
per EP rank for the emulator's popularity, with the trivial placement (rank ``g`` hosts
experts ``[g*k, (g+1)*k)``) or a balanced one (what a recorded distribution or online EPLB
gives: the emulator assumes the distribution is its own routing). The scheduler scales the
MoE share of the decode step by it (docs/emulator.md, *EPLB*).
"""

from __future__ import annotations

import io
import json
import os
import random
import struct
import time
import zipfile
from collections import deque

from .args import StartupError

NOT_SET_MESSAGE = (
    "Please set ServerArgs.expert_distribution_recorder_mode to use ExpertDistributionRecorder."
)


class RecorderError(Exception):
    pass


def model_shape(model_path: str) -> tuple[int, int, int, int]:
    """(layers, first dense layers, routed experts, top-k) from ``config.json`` if there is one."""
    layers, dense, experts, topk = 61, 3, 256, 8
    path = os.path.join(model_path, "config.json")
    try:
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
        layers = int(cfg.get("num_hidden_layers", layers))
        dense = int(cfg.get("first_k_dense_replace", dense if "n_routed_experts" in cfg else 0))
        experts = int(cfg.get("n_routed_experts", cfg.get("num_experts", experts)))
        topk = int(cfg.get("num_experts_per_tok", topk))
    except (OSError, ValueError, TypeError):
        pass
    return layers, min(dense, layers), max(experts, 1), max(topk, 1)


def _popularity(layer: int, experts: int) -> list[float]:
    rng = random.Random(1000 + layer)
    order = list(range(experts))
    rng.shuffle(order)
    weights = [0.0] * experts
    for position, expert in enumerate(order):
        weights[expert] = 1.0 / (1.0 + position) ** 0.8
    total = sum(weights)
    return [w / total for w in weights]


def _rank_loads(weights: list[float], ranks: int, balanced: bool, redundant: int = 0) -> list[float]:
    """Routed-token share per EP rank, each hosting ``ceil((experts + redundant) / ranks)``
    physical experts, a replica carrying an equal share of its expert. Trivial: physical
    expert ``i`` is logical ``i mod experts`` in contiguous blocks (SGLang's trivial
    placement); balanced: replicas of the hottest experts, then the heaviest replica first
    onto the lightest rank with room (a stand-in for SGLang's EPLB algorithm)."""
    experts = len(weights)
    if balanced:
        hottest = sorted(range(experts), key=lambda e: -weights[e])
        physical = list(range(experts)) + [hottest[i % experts] for i in range(redundant)]
    else:
        physical = [i % experts for i in range(experts + redundant)]
    copies = [physical.count(e) for e in range(experts)]
    shares = [weights[e] / copies[e] for e in physical]
    per_rank = -(-len(physical) // ranks)  # the last ranks host fewer when it does not divide
    if not balanced:
        return [sum(shares[g * per_rank:(g + 1) * per_rank]) for g in range(ranks)]
    loads, room = [0.0] * ranks, [per_rank] * ranks
    for share in sorted(shares, reverse=True):
        g = min((r for r in range(ranks) if room[r]), key=lambda r: loads[r])
        loads[g] += share
        room[g] -= 1
    return loads


def moe_imbalance(model_path: str, ep: int, balanced: bool, redundant: int = 0) -> float:
    """Mean over routed layers of max/mean routed load per EP rank (1.0 = even)."""
    layers, dense, experts, _topk = model_shape(model_path)
    ratios = []
    for layer in range(dense, layers):
        loads = _rank_loads(_popularity(layer, experts), max(ep, 1), balanced, redundant)
        mean = sum(loads) / len(loads)
        ratios.append(max(loads) / mean if mean else 1.0)
    return sum(ratios) / len(ratios) if ratios else 1.0


class ExpertRecorder:
    def __init__(
        self, mode: str | None, buffer_size: int | None, model_path: str, out_dir: str | None = None
    ) -> None:
        self.mode = mode
        self.buffer_size = 1000 if buffer_size is None else buffer_size
        self.layers, self.dense, self.experts, self.topk = model_shape(model_path)
        self.out_dir = (
            out_dir or os.environ.get("SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR") or "/tmp"
        )
        self.recording = False
        maxlen = self.buffer_size if self.buffer_size > 0 else None
        self.passes: deque[int] = deque(maxlen=maxlen)

    def _check(self) -> None:
        if self.mode is None:
            raise RecorderError(NOT_SET_MESSAGE)

    def start(self) -> bool:
        """Reset and start; return False when it was already recording."""
        self._check()
        was = self.recording
        self.passes.clear()
        self.recording = True
        return not was

    def stop(self) -> None:
        self._check()
        self.recording = False

    def record(self, tokens: int) -> None:
        if self.recording:
            self.passes.append(tokens)

    def dump(self) -> str:
        self._check()
        popularity = [None if layer < self.dense else _popularity(layer, self.experts)
                      for layer in range(self.layers)]
        rows = []
        for tokens in self.passes:
            total = tokens * self.topk
            for weights in popularity:
                rows.extend([0] * self.experts if weights is None
                            else [int(round(total * p)) for p in weights])
        shape = (len(self.passes), self.layers, self.experts)
        doc = {"rank": 0, "logical_count": (shape, rows),
               "average_utilization_rate_over_window": None}
        os.makedirs(self.out_dir, exist_ok=True)
        path = os.path.join(self.out_dir, f"expert_distribution_recorder_{time.time()}.pt")
        tmp = path + ".partial"
        with open(tmp, "wb") as f:
            f.write(torch_archive(doc))
        os.replace(tmp, path)
        self.passes.clear()
        return path


def _pickle_str(text: str) -> bytes:
    raw = text.encode("utf-8")
    return b"X" + struct.pack("<I", len(raw)) + raw  # BINUNICODE


def _pickle_int(value: int) -> bytes:
    return b"J" + struct.pack("<i", value)  # BININT


def torch_archive(doc: dict) -> bytes:
    """What ``torch.save(doc)`` writes, for a dict of str keys whose values are ints,
    None, or int32 tensors (SGLang's count dtype) as ``(shape, flat row-major values)``:
    a zip of
    ``archive/data.pkl`` (pickle protocol 2), ``archive/data/<n>`` (one little-endian
    storage per tensor), ``archive/byteorder`` and ``archive/version``, stored
    uncompressed, as torch's writer does."""
    pkl = [b"\x80\x02}(" ]  # PROTO 2, EMPTY_DICT, MARK
    storages = []
    for key, value in doc.items():
        pkl.append(_pickle_str(key))
        if value is None:
            pkl.append(b"N")
        elif isinstance(value, int) and not isinstance(value, bool):
            pkl.append(_pickle_int(value))
        else:
            shape, flat = value
            numel = len(flat)
            strides, step = [], 1
            for n in reversed(shape):
                strides.insert(0, step)
                step *= n
            key_n = str(len(storages))
            storages.append(struct.pack(f"<{numel}i", *flat))
            pkl += [b"ctorch._utils\n_rebuild_tensor_v2\n(",
                    b"(" + _pickle_str("storage") + b"ctorch\nIntStorage\n"
                    + _pickle_str(key_n) + _pickle_str("cpu") + _pickle_int(numel) + b"tQ",
                    _pickle_int(0),
                    b"(" + b"".join(_pickle_int(n) for n in shape) + b"t",
                    b"(" + b"".join(_pickle_int(n) for n in strides) + b"t",
                    b"\x89ccollections\nOrderedDict\n)Rt", b"R"]
    pkl.append(b"u.")  # SETITEMS, STOP
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", b"".join(pkl))
        archive.writestr("archive/byteorder", "little")
        for n, data in enumerate(storages):
            archive.writestr(f"archive/data/{n}", data)
        archive.writestr("archive/version", "3\n")
    return out.getvalue()


def _check_nested(value, what: str) -> None:
    def depth(x) -> int:
        if isinstance(x, list):
            if not x:
                raise ValueError(f"{what} has an empty list")
            d = {depth(i) for i in x}
            if len(d) != 1:
                raise ValueError(f"{what} is ragged")
            return 1 + d.pop()
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            raise ValueError(f"{what} holds {type(x).__name__}, not numbers")
        return 0

    d = depth(value)
    if d not in (2, 3):
        raise ValueError(f"{what} must be 2-D or 3-D, got {d}-D")


def _check_doc(doc) -> None:
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    if "logical_count" in doc:
        _check_nested(doc["logical_count"], "logical_count")
    elif "physical_to_logical_map" in doc:
        _check_nested(doc["physical_to_logical_map"], "physical_to_logical_map")
    else:
        raise ValueError("it holds neither logical_count nor physical_to_logical_map")


def check_init_expert_location(value: str | None) -> str:
    """Validate ``--init-expert-location``; return ``"trivial"`` or ``"static"``.

    Raises StartupError naming the file (or the argument) when it cannot be used.
    """
    if value is None or value == "trivial":
        return "trivial"
    text = value.strip()
    if text.startswith("{"):
        try:
            _check_doc(json.loads(text))
        except ValueError as exc:
            raise StartupError(
                f"--init-expert-location: the JSON string is unusable: {exc}"
            ) from None
        return "static"
    path = os.path.expanduser(text)
    if not os.path.isfile(path):
        raise StartupError(f"--init-expert-location {value}: no such file")
    if path.endswith(".json"):
        try:
            with open(path, encoding="utf-8") as f:
                _check_doc(json.load(f))
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            raise StartupError(f"--init-expert-location {value}: unusable JSON: {exc}") from None
        return "static"
    if path.endswith(".pt"):
        try:
            with zipfile.ZipFile(path) as z:
                pickles = [n for n in z.namelist() if n.endswith("data.pkl")]
                if not pickles:
                    raise ValueError("no data.pkl inside; not a torch.save file")
                data = z.read(pickles[0])
        except (OSError, zipfile.BadZipFile, ValueError) as exc:
            raise StartupError(
                f"--init-expert-location {value}: not a torch file the emulator can read ({exc})"
            ) from None
        if b"logical_count" not in data and b"physical_to_logical_map" not in data:
            raise StartupError(
                f"--init-expert-location {value}: holds neither logical_count nor "
                "physical_to_logical_map"
            )
        return "static"
    raise StartupError(
        f"--init-expert-location {value}: expected 'trivial', a .json or .pt file, or a JSON string"
    )
