"""Tests of pdbench.balance: expert-distribution dumps and the expert-load balance they show."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from pdbench.balance import EPSILON, balance, balance_of_file, read_dump, read_placement
from pdbench.emulator.experts import ExpertRecorder
from pdbench.errors import InputError

REPO = Path(__file__).resolve().parents[1]
DUMPS = REPO / "tests" / "data" / "expert-dumps"
EXPECTED = json.loads((DUMPS / "expected.json").read_text())
GB200_DUMP = "gb200-ep48-fp4-decode/expert_distribution_recorder.pt"
SGLANG_PYTHON = Path(os.environ.get("PDBENCH_SGLANG_PYTHON") or REPO / ".venv-sglang/bin/python")
HAS_TORCH = importlib.util.find_spec("torch") is not None


def write_json(tmp_path: Path, doc, name: str = "dump.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(doc) if not isinstance(doc, str) else doc)
    return path


def result_of(tmp_path: Path, doc: dict, **kwargs) -> dict:
    return balance(read_dump(write_json(tmp_path, doc)), **kwargs)


def sglang_rate(mean: float, peak: float) -> float:
    return (mean + EPSILON) / (peak + EPSILON)


# --------------------------------------------------------------------------------------------
# Hand-built dumps with known answers


KNOWN = [
    # (label, document, balance() arguments, GPU loads of layer 0, balancedness of layer 0)
    ("perfect balance", {"logical_count": [[[5] * 8]]}, {"ep": 4},
     [10, 10, 10, 10], 1.0),
    ("one hot expert alone", {"logical_count": [[[100] + [0] * 7]]}, {"ep": 4},
     [100, 0, 0, 0], sglang_rate(25, 100)),
    ("one hot expert among others", {"logical_count": [[[70] + [10] * 7]]}, {"ep": 4},
     [80, 20, 20, 20], sglang_rate(35, 80)),
    # expert 0 has 3 replicas (physical 0, 4, 5): 30 tokens each
    ("redundant experts through a physical map",
     {"logical_count": [[90, 10, 10, 10]], "physical_to_logical_map": [[0, 1, 2, 3, 0, 0]]},
     {"ep": 3}, [40, 20, 60], sglang_rate(40, 60)),
    ("the same counts, trivial placement", {"logical_count": [[90, 10, 10, 10]]}, {"ep": 2},
     [100, 20], sglang_rate(60, 100)),
    # trivial with 2 redundant: physical i holds logical i mod 4, so experts 0 and 1 twice
    ("trivial placement with redundant experts", {"logical_count": [[90, 30, 10, 10]]},
     {"ep": 3, "redundant": 2}, [60, 20, 60], sglang_rate(140 / 3, 60)),
    ("EP size from the file", {"logical_count": [[1, 3]], "ep_size": 2}, {},
     [1, 3], sglang_rate(2, 3)),
    ("EP 1", {"logical_count": [[1, 3]]}, {"ep": 1}, [4], 1.0),
]


@pytest.mark.parametrize("doc, kwargs, loads, expected",
                         [case[1:] for case in KNOWN], ids=[case[0] for case in KNOWN])
def test_known_answers(tmp_path, doc, kwargs, loads, expected):
    r = result_of(tmp_path, doc, **kwargs)
    layer = r["per_layer"][0]
    assert layer["gpu_load"] == loads
    assert layer["balancedness"] == pytest.approx(expected, abs=1e-6)
    assert r["balancedness"] == pytest.approx(expected, abs=1e-6)
    assert layer["max_over_mean"] == pytest.approx(max(loads) / np.mean(loads))
    assert r["gpu_load"] == loads
    assert r["ep"] == len(loads)


def test_placement_is_reported(tmp_path):
    trivial = {"logical_count": [[1, 2, 3, 4]]}
    assert result_of(tmp_path, trivial, ep=2)["placement"].startswith("trivial (assumed")
    r = result_of(tmp_path, {**trivial, "physical_to_logical_map": [[3, 2, 1, 0]]}, ep=2)
    assert r["placement"] == "the dump's physical_to_logical_map"
    assert r["gpu_load"] == [7, 3]


def test_layers_without_tokens_count_as_balanced_as_sglang_averages_them(tmp_path):
    # layer 0 is dense (no routed tokens), layer 1 has a hot GPU
    r = result_of(tmp_path, {"logical_count": [[0, 0, 0, 0], [30, 0, 10, 0]]}, ep=2)
    layer1 = sglang_rate(20, 30)
    assert r["per_layer"][0]["balancedness"] == 1.0
    assert r["per_layer"][0]["max_over_mean"] is None
    assert r["balancedness"] == pytest.approx((1.0 + layer1) / 2, abs=1e-6)
    assert r["balancedness_routed_layers"] == pytest.approx(layer1, abs=1e-6)
    assert r["max_over_mean"] == pytest.approx(1.5)
    assert r["routed_layers"] == 1
    assert r["worst_layer"]["layer"] == 1


def test_passes_window_and_per_pass_mean(tmp_path):
    # pass 1 balanced, pass 2 all on GPU 0, pass 3 empty (an unfilled buffer row)
    doc = {"logical_count": [[[5, 5]], [[10, 0]], [[0, 0]]]}
    r = result_of(tmp_path, doc, ep=2)
    assert r["passes"] == 2
    assert r["balancedness"] == pytest.approx(sglang_rate(10, 15), abs=1e-6)
    assert r["per_pass_balancedness"] == pytest.approx((1.0 + sglang_rate(5, 10)) / 2, abs=1e-6)


def test_a_given_placement_replaces_the_trivial_one(tmp_path):
    dump = write_json(tmp_path, {"logical_count": [[90, 10, 10, 10]]})
    placement = write_json(tmp_path, {"physical_to_logical_map": [[0, 1, 2, 3, 0, 0]]},
                           "placement.json")
    r = balance_of_file(dump, ep=3, placement=placement)
    assert r["gpu_load"] == [40, 20, 60]
    assert r["placement"].startswith("the given placement's physical_to_logical_map")
    assert read_placement(DUMPS / "per-pass.pt").shape == (3, 6)
    with pytest.raises(InputError, match=r"holds no physical_to_logical_map"):
        read_placement(dump)
    result = pdbench("balance", dump, "--ep", "3", "--placement", dump)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == f"pdbench: error: {dump}: holds no physical_to_logical_map\n"


# --------------------------------------------------------------------------------------------
# SGLang's .pt layouts (written by torch.save; numbers from torch.load and SGLang itself)


@pytest.mark.parametrize("name", ["stat-v0.4.7.pt", "stat-v0.5.2.pt"])
def test_stat_dumps_match_torch_and_sglang(name):
    expected = EXPECTED[name]
    dump = read_dump(DUMPS / name)
    assert dump.reader == "built-in"
    assert list(dump.logical_count.shape) == expected["shape"]
    assert dump.logical_count.sum(axis=(0, 2)).tolist() == expected["per_layer_sum"]
    assert dump.average_utilization_rate_over_window == pytest.approx(
        expected["average_utilization_rate_over_window"])
    assert dump.physical_to_logical_map is None
    sglang = expected["sglang"]
    r = balance(dump, ep=sglang["ep"])
    assert r["balancedness"] == pytest.approx(sglang["window"], abs=1e-6)
    assert r["per_pass_balancedness"] == pytest.approx(sglang["per_pass"], abs=1e-6)
    assert [row["balancedness"] for row in r["per_layer"]] == pytest.approx(
        sglang["window_per_layer"], abs=1e-6)
    assert r["passes"] == 3  # the zero row of the buffer is no pass


@pytest.mark.parametrize("name", ["per-pass.pt", "per-token-v0.4.7.pt"])
def test_per_pass_and_per_token_dumps_match_torch_and_sglang(name):
    expected = EXPECTED[name]
    dump = read_dump(DUMPS / name)
    assert dump.reader == "built-in"
    assert dump.physical_count.sum(axis=0).tolist() == expected["physical_sum"]
    assert dump.physical_to_logical_map.shape == (3, 6)
    if "logical_sum" in expected:
        assert dump.logical_count.sum(axis=0).tolist() == expected["logical_sum"]
        assert dump.logical_count.shape[0] == expected["passes"]  # pass 6 is two records
    sglang = expected["sglang"]
    r = balance(dump, ep=sglang["ep"])
    assert r["placement"] == "recorded physical counts"
    assert r["balancedness"] == pytest.approx(sglang["window"], abs=1e-6)
    if r["passes"] > 1:
        assert r["per_pass_balancedness"] == pytest.approx(sglang["per_pass"], abs=1e-6)


def test_views_and_other_dtypes():
    """Offsets and strides into a shared storage, bfloat16, uint16 (_rebuild_tensor_v3)."""
    from pdbench.balance import load_pt

    expected = EXPECTED["views.pt"]
    doc, reader = load_pt(DUMPS / "views.pt")
    assert reader == "built-in"
    assert doc["logical_count"].tolist() == expected["logical_count"]
    assert doc["extra"]["bf16"].tolist() == expected["bf16"]
    assert doc["extra"]["u16"].tolist() == expected["u16"]
    assert read_dump(DUMPS / "views.pt").logical_count.tolist() == expected["logical_count"]


def test_legacy_torch_file_needs_torch():
    path = DUMPS / "legacy.pt"
    if HAS_TORCH:
        assert read_dump(path).reader == "torch"
        return
    with pytest.raises(InputError) as exc:
        read_dump(path)
    msg = str(exc.value)
    assert msg.startswith(f"{path}: ") and "install torch" in msg and "\n" not in msg


def test_legacy_torch_file_with_torch():
    """In the SGLang environment (which has torch) the fallback reads what the built-in cannot."""
    if not SGLANG_PYTHON.exists():
        pytest.skip(f"SGLang virtualenv not found ({SGLANG_PYTHON}); it has torch")
    code = ("import json, sys; from pdbench.balance import balance_of_file; "
            "r = balance_of_file(sys.argv[1], ep=3); "
            "print(json.dumps([r['reader'], r['balancedness']]))")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    out = subprocess.run([str(SGLANG_PYTHON), "-c", code, str(DUMPS / "legacy.pt")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    reader, value = json.loads(out.stdout.strip().splitlines()[-1])
    assert reader == "torch"
    assert value == pytest.approx(EXPECTED["legacy.pt"]["sglang"]["window"], abs=1e-6)


def _torch_archive(tmp_path: Path, pickled: bytes, name: str = "evil.pt") -> Path:
    path = tmp_path / name
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickled)
        z.writestr("archive/byteorder", "little")
    return path


def test_a_pickle_naming_other_globals_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    pickled = f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()
    path = _torch_archive(tmp_path, pickled)
    if HAS_TORCH:
        with pytest.raises(InputError):
            read_dump(path)
    else:
        with pytest.raises(InputError, match=r"names os\.system.*install torch"):
            read_dump(path)
    assert not marker.exists()


def test_big_endian_archive(tmp_path):
    """Storages are read in the byte order the archive records."""
    # torch.save's pickle of {"logical_count": an int32 tensor [1, 1, 4]} (protocol 2)
    body = (b"\x80\x02}X\r\x00\x00\x00logical_countctorch._utils\n_rebuild_tensor_v2\n"
            b"((X\x07\x00\x00\x00storagectorch\nIntStorage\nX\x01\x00\x00\x000X\x03\x00"
            b"\x00\x00cpuK\x04tQK\x00K\x01K\x01K\x04\x87K\x04K\x04K\x01\x87\x89"
            b"ccollections\nOrderedDict\n)RtRs.")
    path = tmp_path / "big.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("big/data.pkl", body)
        z.writestr("big/byteorder", "big")
        z.writestr("big/data/0", np.array([1, 2, 3, 400], dtype=">i4").tobytes())
    dump = read_dump(path)
    assert dump.logical_count.tolist() == [[[1, 2, 3, 400]]]


# --------------------------------------------------------------------------------------------
# The emulator's dump: SGLang's stat .pt, one row per recorded forward pass


def test_emulator_dump(tmp_path):
    recorder = ExpertRecorder("stat", -1, str(tmp_path / "no-model"), out_dir=str(tmp_path))
    recorder.start()
    for tokens in (64, 64, 32):
        recorder.record(tokens)
    path = recorder.dump()
    assert Path(path).suffix == ".pt"
    dump = read_dump(path)
    assert dump.format == "sglang .pt (stat)" and dump.reader == "built-in"
    assert dump.logical_count.shape == (3, 61, 256)
    # each pass's row: its tokens x top-k (8) on every routed layer, rounded per expert
    per_pass = dump.logical_count[:, 30, :].sum(axis=1)
    assert per_pass.tolist() == pytest.approx([64 * 8, 64 * 8, 32 * 8], abs=256)
    raw = dump.logical_count.sum(axis=0)
    r = balance(dump, ep=8)
    assert r["routed_layers"] == 58 and r["per_layer"][0]["tokens"] == 0
    # independent of the module: each GPU holds 32 consecutive experts
    for layer in (3, 30, 60):
        loads = [raw[layer][g * 32:(g + 1) * 32].sum() for g in range(8)]
        assert r["per_layer"][layer]["gpu_load"] == pytest.approx(loads)
        assert sum(loads) == pytest.approx(160 * 8, abs=3 * 256)
        assert r["per_layer"][layer]["balancedness"] == pytest.approx(
            sglang_rate(sum(loads) / 8, max(loads)), abs=1e-6)
    assert 0 < r["balancedness_routed_layers"] < 1


def test_emulator_dump_loads_with_torch(tmp_path):
    torch = pytest.importorskip("torch", reason="torch is not installed in this environment")
    recorder = ExpertRecorder("stat", -1, str(tmp_path / "no-model"), out_dir=str(tmp_path))
    recorder.start()
    recorder.record(16)
    doc = torch.load(recorder.dump(), weights_only=True)
    assert doc["rank"] == 0 and doc["average_utilization_rate_over_window"] is None
    assert doc["logical_count"].dtype == torch.int32
    assert tuple(doc["logical_count"].shape) == (1, 61, 256)


# --------------------------------------------------------------------------------------------
# The real GB200 dump


def test_gb200_dump(shared_fixtures):
    path = shared_fixtures / GB200_DUMP
    dump = read_dump(path)
    assert dump.reader == "built-in" and dump.format == "sglang .pt (stat)"
    assert dump.logical_count.shape == (1, 61, 256)
    assert dump.logical_count.sum() == 43_099_104_000
    assert dump.average_utilization_rate_over_window is None
    # The launch: EP48 with 32 redundant experts (288 physical, 6 per GPU), trivial placement
    r = balance(dump, ep=48, redundant=32)
    assert (r["physical_experts"], r["experts_per_gpu"], r["routed_layers"]) == (288, 6, 58)
    assert r["balancedness"] == pytest.approx(0.402282, abs=1e-6)
    assert r["balancedness_routed_layers"] == pytest.approx(0.371365, abs=1e-6)
    assert r["worst_layer"]["layer"] == 54
    assert len(r["gpu_load"]) == 48 and sum(r["gpu_load"]) == pytest.approx(43_099_104_000)
    # SGLang's compute_gpu_physical_count + compute_utilization_rate (v0.5.5.post2) on this
    # dump's counts give 0.4053477 over 32 GPUs and 0.7233009 over 8
    assert balance(dump, ep=32)["balancedness"] == pytest.approx(0.4053477, abs=1e-6)
    assert balance(dump, ep=8)["balancedness"] == pytest.approx(0.7233009, abs=1e-6)


# --------------------------------------------------------------------------------------------
# Bad input: one line naming the file


BAD_JSON = [
    ("a list", [1, 2, 3], {"ep": 1}, "not an expert-distribution dump (holds a list"),
    ("no counts", {"rank": 0}, {"ep": 1}, "no logical_count or records"),
    ("only a map", {"physical_to_logical_map": [[0, 1]]}, {"ep": 1}, "a placement, not a dump"),
    ("negative count", {"logical_count": [[[1, -1]]]}, {"ep": 1}, "negative counts"),
    ("NaN count", '{"logical_count": [[[NaN, 1]]]}', {"ep": 1}, "NaN or infinite values"),
    ("infinite count", '{"logical_count": [[[Infinity, 1]]]}', {"ep": 1}, "NaN or infinite values"),
    ("1-D counts", {"logical_count": [1, 2, 3]}, {"ep": 1}, "has 1 dimensions, expected 2 or 3"),
    ("4-D counts", {"logical_count": [[[[1]]]]}, {"ep": 1}, "has 4 dimensions"),
    ("ragged counts", {"logical_count": [[1, 2], [3]]}, {"ep": 1}, "not an array of numbers"),
    ("text counts", {"logical_count": [["a", "b"]]}, {"ep": 1}, "not an array of numbers"),
    ("empty counts", {"logical_count": [[]]}, {"ep": 1}, "is empty"),
    ("no tokens", {"logical_count": [[[0, 0]]]}, {"ep": 1}, "counts no routed tokens"),
    ("map of other layers", {"logical_count": [[1, 1]], "physical_to_logical_map": [[0, 1]] * 2},
     {"ep": 1}, "has 2 layers, the counts 1"),
    ("map beyond the experts", {"logical_count": [[1, 1]], "physical_to_logical_map": [[0, 2]]},
     {"ep": 1}, "names experts outside 0..1"),
    ("fractional map", {"logical_count": [[1, 1]], "physical_to_logical_map": [[0, 0.5]]},
     {"ep": 1}, "physical_to_logical_map holds values that are not expert ids"),
    ("negative map", {"logical_count": [[1, 1]], "physical_to_logical_map": [[0, -1]]},
     {"ep": 1}, "physical_to_logical_map holds values that are not expert ids"),
    ("boolean counts", {"logical_count": [[True, False]]}, {"ep": 1}, "not an array of numbers"),
    ("expert without replica", {"logical_count": [[1, 1]], "physical_to_logical_map": [[0, 0]]},
     {"ep": 1}, "logical expert 1 of layer 0 routed tokens but has no physical replica"),
    ("zero GPUs in the file", {"logical_count": [[1, 1]], "ep_size": 0}, {},
     "ep_size must be a positive integer"),
    ("zero GPUs given", {"logical_count": [[1, 1]]}, {"ep": 0}, "positive number of GPUs"),
    ("EP size unknown", {"logical_count": [[1, 1]]}, {}, "does not say the EP size"),
    ("EP not dividing the experts", {"logical_count": [[1, 1, 1]]}, {"ep": 2},
     "3 physical experts do not divide over 2 GPUs"),
    ("negative redundant", {"logical_count": [[1, 1]]}, {"ep": 1, "redundant": -1},
     "redundant experts must be >= 0"),
    ("redundant against the map", {"logical_count": [[1, 1]], "physical_to_logical_map": [[0, 1]]},
     {"ep": 1, "redundant": 2}, "has 2 physical experts, not 2 logical + 2 redundant"),
    ("no records", {"records": [], "last_physical_to_logical_map": [[0]]}, {"ep": 1},
     "records is empty"),
    ("record of another shape",
     {"records": [{"global_physical_count": [[1, 2, 3]]}], "last_physical_to_logical_map": [[0, 1]]},
     {"ep": 1}, "records[0] has shape [1, 3], the map [1, 2]"),
    ("record without counts", {"records": [{"rank": 0}], "last_physical_to_logical_map": [[0]]},
     {"ep": 1}, "neither global_physical_count nor topk_ids_of_layer"),
    ("record ids beyond the map",
     {"records": [{"topk_ids_of_layer": [[[0, 5]]]}], "last_physical_to_logical_map": [[0, 1]]},
     {"ep": 1}, "topk_ids_of_layer does not fit the map"),
    ("record with a bad pass id",
     {"records": [{"forward_pass_id": "x", "global_physical_count": [[1]]}],
      "last_physical_to_logical_map": [[0]]}, {"ep": 1}, "forward_pass_id is not an integer"),
    ("records without a map", {"records": [{"global_physical_count": [[1]]}]}, {"ep": 1},
     "last_physical_to_logical_map is not an array of numbers"),
]


@pytest.mark.parametrize("doc, kwargs, message", [c[1:] for c in BAD_JSON],
                         ids=[c[0] for c in BAD_JSON])
def test_bad_dumps(tmp_path, doc, kwargs, message):
    path = write_json(tmp_path, doc)
    with pytest.raises(InputError) as exc:
        balance(read_dump(path), **kwargs)
    text = str(exc.value)
    assert text.startswith(f"{path}: ") and message in text and "\n" not in text


BAD_FILES = [
    ("missing", None, "file not found"),
    ("directory", "dir", "is a directory"),
    ("empty", b"", "empty file"),
    ("not JSON", b"{not json", "invalid JSON"),
    ("binary", b"\xff\xfe\x00\x81garbage", "neither a torch .pt archive nor JSON"),
    ("zip without a pickle", "zip", "no single data.pkl inside"),
    ("truncated dump", "truncated", "damaged zip archive"),
]


@pytest.mark.parametrize("content, message", [c[1:] for c in BAD_FILES],
                         ids=[c[0] for c in BAD_FILES])
def test_bad_files(tmp_path, content, message):
    path = tmp_path / "dump.bin"
    if content == "dir":
        path.mkdir()
    elif content == "truncated":
        path.write_bytes((DUMPS / "stat-v0.4.7.pt").read_bytes()[:300])
    elif content == "zip":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("x/readme.txt", "hello")
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(InputError) as exc:
        read_dump(path)
    text = str(exc.value)
    assert text.startswith(f"{path}: ") and "\n" not in text
    if content == "zip" and HAS_TORCH:
        return  # torch gives its own reason
    assert message in text


def test_damaged_pickles_are_input_errors(tmp_path):
    """Every byte of a real dump's data.pkl changed in turn: a result or an InputError."""
    with zipfile.ZipFile(DUMPS / "stat-v0.5.2.pt") as z:
        members = {n: z.read(n) for n in z.namelist()}
    name = next(n for n in members if n.endswith("/data.pkl"))
    original = members[name]
    outcomes = set()
    for i in range(len(original)):
        damaged = bytearray(original)
        damaged[i] ^= 0x5A
        path = tmp_path / f"damaged-{i}.pt"
        with zipfile.ZipFile(path, "w") as z:
            for n, data in members.items():
                z.writestr(n, bytes(damaged) if n == name else data)
        try:
            balance(read_dump(path), ep=3)
            outcomes.add("read")
        except InputError as exc:
            assert str(exc).startswith(f"{path}: ") and "\n" not in str(exc)
            outcomes.add("error")
    assert "error" in outcomes


# --------------------------------------------------------------------------------------------
# The command line


def pdbench(*args):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.run([sys.executable, "-m", "pdbench.cli", *map(str, args)],
                          capture_output=True, text=True, env=env)


def test_cli_text_and_json(tmp_path):
    path = write_json(tmp_path, {"logical_count": [[0, 0, 0, 0], [30, 0, 10, 0]]})
    text = pdbench("balance", path, "--ep", "2")
    assert text.returncode == 0, text.stderr
    assert "balancedness (SGLang: mean over layers of mean/max GPU load): 0.8333" in text.stdout
    assert "placement: trivial (assumed" in text.stdout
    assert "      0  (no routed tokens)" in text.stdout
    as_json = pdbench("balance", path, "--ep", "2", "--json")
    assert as_json.returncode == 0, as_json.stderr
    r = json.loads(as_json.stdout)
    assert r["per_layer"][1]["gpu_load"] == [30, 10]
    mapped = pdbench("balance", DUMPS / "per-pass.pt", "--ep", "3", "--json")
    assert json.loads(mapped.stdout)["placement"] == "recorded physical counts"


@pytest.mark.parametrize("args, message", [
    (["--ep", "0"], "argument --ep: 0 must be >= 1"),
    (["--ep", "two"], "argument --ep: 'two' is not an integer"),
    (["--ep", "1.5"], "argument --ep: '1.5' is not an integer"),
    (["--ep", "-4"], "argument --ep: -4 must be >= 1"),
    (["--ep", "2", "--redundant-experts", "-1"], "argument --redundant-experts: -1 must be >= 0"),
    (["--ep", "3"], "do not divide over 3 GPUs"),
    ([], "does not say the EP size"),
])
def test_cli_errors_are_one_line(tmp_path, args, message):
    path = write_json(tmp_path, {"logical_count": [[1, 1, 1, 1]]})
    result = pdbench("balance", path, *args)
    assert result.returncode == 2
    assert result.stdout == ""
    assert message in result.stderr and result.stderr.count("\n") == 1
