"""The SGLang log grammar: every dialect of sglang.md §4, real logs, and bad inputs."""

import gzip
import re
import subprocess
from collections import Counter

import pytest

from pdbench import loglines
from pdbench.errors import InputError
from pdbench.loglines import KINDS, iter_log, parse_line

NO_RANKS = {"dp": None, "tp": None, "ep": None, "pp": None, "attn_cp": None, "moe_dp": None}

GB200_LOG = "gb200-ep48-fp4-decode/launch_server_decode_node_rank_0.log"
TINY_LOG = "h200-sglang-0.5.17-tiny-moe/server.log"
FILL = "h200-sglang-0.5.17-fill-release"


def rec(kind, time, epoch, *, arrival=None, ranks=None, **fields):
    """The full record parse_line must return (everything but file/line)."""
    out = {"kind": kind, "time": time, "epoch": epoch, "arrival": arrival, **NO_RANKS}
    out.update(ranks or {})
    out.update(fields)
    return out


T0 = "2025-04-28 10:00:00"
E0 = 1745834400.0
T1 = "2025-11-22 18:24:26"
E1 = 1763835866.0
T2 = "2026-02-01 12:00:00"
E2 = 1769947200.0

# ---------------------------------------------------------------------------------------
# Decode lines, one per dialect (sglang.md §4.1, §4.2)

DECODE_CASES = [
    pytest.param(
        f"[{T0} DP1 TP1] Decode batch. #running-req: 12, #token: 3456, token usage: 0.05, "
        "accept len: 2.50, PD: pre-allocated usage: 0.10, gen throughput (token/s): 123.45, "
        "#queue-req: 3",
        rec(
            "decode",
            T0,
            E0,
            ranks={"dp": 1, "tp": 1},
            iter=None,
            running_req=12,
            token=3456,
            token_usage=0.05,
            accept_len=2.5,
            pre_allocated_usage=0.1,
            gen_throughput=123.45,
            queue_req=3,
        ),
        id="v0.4.6-period-PD-prefix",
    ),
    pytest.param(
        f"[{T0} DP0 TP2 PP1] Decode batch. #running-req: 8, #token: 1024, token usage: 0.01, "
        "pre-allocated usage: 0.00, gen throughput (token/s): 456.78, #queue-req: 0",
        rec(
            "decode",
            T0,
            E0,
            ranks={"dp": 0, "tp": 2, "pp": 1},
            iter=None,
            running_req=8,
            token=1024,
            token_usage=0.01,
            pre_allocated_usage=0.0,
            gen_throughput=456.78,
            queue_req=0,
        ),
        id="v0.4.6-prefix-DP-TP-PP",
    ),
    pytest.param(
        f"[{T0} TP0] Decode batch. #running-req: 8, #token: 1024, token usage: 0.01, "
        "cuda graph: True, gen throughput (token/s): 456.78, #queue-req: 0",
        rec(
            "decode",
            T0,
            E0,
            ranks={"tp": 0},
            iter=None,
            running_req=8,
            token=1024,
            token_usage=0.01,
            cuda_graph=True,
            graph_backend="cuda",
            gen_throughput=456.78,
            queue_req=0,
        ),
        id="v0.4.7-cuda-graph",
    ),
    pytest.param(
        f"[{T0} DP5 TP5] Decode batch. #running-req: 100, #token: 20000, token usage: 0.31, "
        "pre-allocated usage: 0.02, #retracted-req: 1, cuda graph: False, "
        "gen throughput (token/s): 2000.00, #queue-req: 9",
        rec(
            "decode",
            T0,
            E0,
            ranks={"dp": 5, "tp": 5},
            iter=None,
            running_req=100,
            token=20000,
            token_usage=0.31,
            pre_allocated_usage=0.02,
            retracted_req=1,
            cuda_graph=False,
            graph_backend="cuda",
            gen_throughput=2000.0,
            queue_req=9,
        ),
        id="v0.4.9-retracted",
    ),
    pytest.param(
        f"[{T0} DP0 TP0] Decode batch. #running-req: 1, #token: 70, token usage: 0.00, "
        "cuda graph: True, gen throughput (token/s): 55.10, #queue-req: 0, "
        "timestamp: 2025-07-10T08:15:30.123456",
        rec(
            "decode",
            T0,
            E0,
            ranks={"dp": 0, "tp": 0},
            iter=None,
            running_req=1,
            token=70,
            token_usage=0.0,
            cuda_graph=True,
            graph_backend="cuda",
            gen_throughput=55.1,
            queue_req=0,
            timestamp="2025-07-10T08:15:30.123456",
        ),
        id="2025-07-timestamp",
    ),
    pytest.param(
        f"[{T0} DP2 TP2 EP2 PP0] Decode batch. #running-req: 64, #token: 9000, "
        "token usage: 0.12, pre-allocated usage: 0.01, #retracted-req: 0, cuda graph: True, "
        "gen throughput (token/s): 3000.50, #queue-req: 5, ",
        rec(
            "decode",
            T0,
            E0,
            ranks={"dp": 2, "tp": 2, "ep": 2, "pp": 0},
            iter=None,
            running_req=64,
            token=9000,
            token_usage=0.12,
            pre_allocated_usage=0.01,
            retracted_req=0,
            cuda_graph=True,
            graph_backend="cuda",
            gen_throughput=3000.5,
            queue_req=5,
        ),
        id="v0.4.10-trailing-comma-prefix-DP-TP-EP-PP",
    ),
    pytest.param(
        f"[{T0} DP3 TP3 EP3] Decode batch. #running-req: 256, #token: 537600, "
        "token usage: 0.81, pre-allocated usage: 0.02, #prealloc-req: 0, #transfer-req: 4, "
        "#retracted-req: 0, cuda graph: True, gen throughput (token/s): 2291.34, "
        "#queue-req: 0, ",
        rec(
            "decode",
            T0,
            E0,
            ranks={"dp": 3, "tp": 3, "ep": 3},
            iter=None,
            running_req=256,
            token=537600,
            token_usage=0.81,
            pre_allocated_usage=0.02,
            prealloc_req=0,
            transfer_req=4,
            retracted_req=0,
            cuda_graph=True,
            graph_backend="cuda",
            gen_throughput=2291.34,
            queue_req=0,
        ),
        id="2025-10-prealloc-transfer",
    ),
    pytest.param(
        f"[{T0} DP3 TP3 EP3] Decode batch [1234], #running-req: 2, #token: 128, "
        "token usage: 0.00, cuda graph: True, gen throughput (token/s): 10.00, #queue-req: 0, ",
        rec(
            "decode",
            T0,
            E0,
            ranks={"dp": 3, "tp": 3, "ep": 3},
            iter=1234,
            running_req=2,
            token=128,
            token_usage=0.0,
            cuda_graph=True,
            graph_backend="cuda",
            gen_throughput=10.0,
            queue_req=0,
        ),
        id="2025-10-iter-comma",
    ),
    pytest.param(
        f"[{T0}] Decode batch [77]. #running-req: 2, #token: 128, token usage: 0.00, "
        "cuda graph: True, gen throughput (token/s): 10.00, #queue-req: 0, ",
        rec(
            "decode",
            T0,
            E0,
            iter=77,
            running_req=2,
            token=128,
            token_usage=0.0,
            cuda_graph=True,
            graph_backend="cuda",
            gen_throughput=10.0,
            queue_req=0,
        ),
        id="2025-10-iter-period",
    ),
    pytest.param(
        f"[{T1} DP31 PP0 TP31 EP31] Decode batch, #running-req: 7, #token: 7040, "
        "token usage: 0.00, pre-allocated usage: 0.00, #prealloc-req: 0, #transfer-req: 0, "
        "#retracted-req: 0, cuda graph: True, gen throughput (token/s): 6.73, #queue-req: 0,",
        rec(
            "decode",
            T1,
            E1,
            ranks={"dp": 31, "pp": 0, "tp": 31, "ep": 31},
            iter=None,
            running_req=7,
            token=7040,
            token_usage=0.0,
            pre_allocated_usage=0.0,
            prealloc_req=0,
            transfer_req=0,
            retracted_req=0,
            cuda_graph=True,
            graph_backend="cuda",
            gen_throughput=6.73,
            queue_req=0,
        ),
        id="v0.5.5-comma-form-prefix-DP-PP-TP-EP-trailing-bare-comma",
    ),
    pytest.param(
        f"[{T1} DP0 TP0 EP0] Decode batch, #running-req: 1024, #token: 2088960, "
        "token usage: 0.67, pre-allocated usage: 0.00, #prealloc-req: 0, #transfer-req: 0, "
        "#retracted-req: 0, cuda graph: True, gen throughput (token/s): 12015.73, "
        "#queue-req: 952, ",
        rec(
            "decode",
            T1,
            E1,
            ranks={"dp": 0, "tp": 0, "ep": 0},
            iter=None,
            running_req=1024,
            token=2088960,
            token_usage=0.67,
            pre_allocated_usage=0.0,
            prealloc_req=0,
            transfer_req=0,
            retracted_req=0,
            cuda_graph=True,
            graph_backend="cuda",
            gen_throughput=12015.73,
            queue_req=952,
        ),
        id="v0.5.5-gb200-real-line",
    ),
    pytest.param(
        f"[{T1} DP1 TP1 EP1] Decode batch, #running-req: 32, #token: 6400, token usage: 0.10, "
        "accept len: 3.21, accept rate: 0.74, cuda graph: True, "
        "gen throughput (token/s): 1500.00, #queue-req: 0, ",
        rec(
            "decode",
            T1,
            E1,
            ranks={"dp": 1, "tp": 1, "ep": 1},
            iter=None,
            running_req=32,
            token=6400,
            token_usage=0.1,
            accept_len=3.21,
            accept_rate=0.74,
            cuda_graph=True,
            graph_backend="cuda",
            gen_throughput=1500.0,
            queue_req=0,
        ),
        id="2025-12-accept-len-rate",
    ),
    pytest.param(
        f"[{T2} DP4 TP4 EP4] Decode batch, #running-req: 9, #token: 900, token usage: 0.01, "
        "cuda graph: True, gen throughput (token/s): 321.00, #queue-req: 7",
        rec(
            "decode",
            T2,
            E2,
            ranks={"dp": 4, "tp": 4, "ep": 4},
            iter=None,
            running_req=9,
            token=900,
            token_usage=0.01,
            cuda_graph=True,
            graph_backend="cuda",
            gen_throughput=321.0,
            queue_req=7,
        ),
        id="2026-01-no-trailing-comma",
    ),
    pytest.param(
        f"[{T2} DP4 TP4 EP4] Decode batch, #running-req: 9, #token: 900, token usage: 0.01, "
        "cuda graph: True, gen throughput (token/s): 321.00, #queue-req: 7   ",
        rec(
            "decode",
            T2,
            E2,
            ranks={"dp": 4, "tp": 4, "ep": 4},
            iter=None,
            running_req=9,
            token=900,
            token_usage=0.01,
            cuda_graph=True,
            graph_backend="cuda",
            gen_throughput=321.0,
            queue_req=7,
        ),
        id="trailing-spaces",
    ),
    pytest.param(
        f"[{T2} DP6 TP6 EP6] Decode batch, #running-req: 40, #token: 8000, token usage: 0.20, "
        "pre-allocated usage: 0.03, #prealloc-req: 1, #transfer-req: 2, #host-receive-req: 3, "
        "#retracted-req: 0, cuda graph: True, gen throughput (token/s): 4000.00, #queue-req: 0",
        rec(
            "decode",
            T2,
            E2,
            ranks={"dp": 6, "tp": 6, "ep": 6},
            iter=None,
            running_req=40,
            token=8000,
            token_usage=0.2,
            pre_allocated_usage=0.03,
            prealloc_req=1,
            transfer_req=2,
            host_receive_req=3,
            retracted_req=0,
            cuda_graph=True,
            graph_backend="cuda",
            gen_throughput=4000.0,
            queue_req=0,
        ),
        id="0.5.23-host-receive-req",
    ),
    pytest.param(
        f"[{T2}] Decode batch, #running-req: 4, #full token: 1000, full token usage: 0.01, "
        "#swa token: 500, swa token usage: 0.02, cuda graph: True, "
        "gen throughput (token/s): 99.99, #queue-req: 1",
        rec(
            "decode",
            T2,
            E2,
            iter=None,
            running_req=4,
            full_token=1000,
            full_token_usage=0.01,
            swa_token=500,
            swa_token_usage=0.02,
            token=1000,
            token_usage=0.01,
            cuda_graph=True,
            graph_backend="cuda",
            gen_throughput=99.99,
            queue_req=1,
        ),
        id="hybrid-swa-pools",
    ),
    pytest.param(
        f"[{T2}] Decode batch, #running-req: 4, #cached-token: 0, #full token: 1000, "
        "full token usage: 0.01, mamba num: 3, mamba usage: 0.25, waiting-image-req: 2, "
        "cuda graph: True, gen throughput (token/s): 99.99, #queue-req: 1",
        rec(
            "decode",
            T2,
            E2,
            iter=None,
            running_req=4,
            cached_token=0,
            full_token=1000,
            full_token_usage=0.01,
            mamba_num=3,
            mamba_usage=0.25,
            token=1000,
            token_usage=0.01,
            waiting_image_req=2,
            cuda_graph=True,
            graph_backend="cuda",
            gen_throughput=99.99,
            queue_req=1,
        ),
        id="hybrid-mamba-pool-and-image-queue",
    ),
    pytest.param(
        f"[{T1}] Decode batch, #running-req: 2, #token: 20, token usage: 0.00, "
        "cpu graph: False, gen throughput (token/s): 1.50, #queue-req: 0, ",
        rec(
            "decode",
            T1,
            E1,
            iter=None,
            running_req=2,
            token=20,
            token_usage=0.0,
            cuda_graph=False,
            graph_backend="cpu",
            gen_throughput=1.5,
            queue_req=0,
        ),
        id="2025-09-cpu-graph",
    ),
    pytest.param(
        f"[{T1}] Decode batch, #running-req: 2, #token: 20, token usage: 0.00, "
        "npu graph: True, gen throughput (token/s): 1.50, #queue-req: 0",
        rec(
            "decode",
            T1,
            E1,
            iter=None,
            running_req=2,
            token=20,
            token_usage=0.0,
            cuda_graph=True,
            graph_backend="npu",
            gen_throughput=1.5,
            queue_req=0,
        ),
        id="npu-graph",
    ),
    pytest.param(
        f"[{T2} DP0 TP0 EP0] Decode batch, #running-req: 64, #token: 9000, "
        "token usage: 0.05, cuda graph: True, gen throughput (token/s): 30000.00, "
        "#queue-req: 0, est. decode TFLOPS/s (per GPU): 123.45, "
        "est. read BW (GB/s per GPU): 2500.00, est. write BW (GB/s per GPU): 12.50, "
        "fwd occupancy: 87.50%",
        rec(
            "decode",
            T2,
            E2,
            ranks={"dp": 0, "tp": 0, "ep": 0},
            iter=None,
            running_req=64,
            token=9000,
            token_usage=0.05,
            cuda_graph=True,
            graph_backend="cuda",
            gen_throughput=30000.0,
            queue_req=0,
            est_decode_tflops_per_gpu=123.45,
            est_read_bw_gb_s_per_gpu=2500.0,
            est_write_bw_gb_s_per_gpu=12.5,
            fwd_occupancy=87.5,
        ),
        id="tflops-and-occupancy-tails",
    ),
    pytest.param(
        f"[{T2}.123 DP0 TP0 EP0] Decode batch, #running-req: 3, #token: 30, token usage: 0.00, "
        "cuda graph: True, gen throughput (token/s): 9.00, #queue-req: 0",
        rec(
            "decode",
            T2 + ".123",
            E2 + 0.123,
            ranks={"dp": 0, "tp": 0, "ep": 0},
            iter=None,
            running_req=3,
            token=30,
            token_usage=0.0,
            cuda_graph=True,
            graph_backend="cuda",
            gen_throughput=9.0,
            queue_req=0,
        ),
        id="SGLANG_LOG_MS",
    ),
    pytest.param(
        "[2026-07-20 12:00:00 DP3 PP1 ATTN_CP0 MOE_DP2 TP5 EP5] Decode batch, "
        "#running-req: 256, #token: 537600, token usage: 0.81, pre-allocated usage: 0.02, "
        "#prealloc-req: 0, #transfer-req: 4, #retracted-req: 0, cuda graph: True, "
        "gen throughput (token/s): 2291.34, #queue-req: 0",
        rec(
            "decode",
            "2026-07-20 12:00:00",
            1784548800.0,
            ranks={"dp": 3, "pp": 1, "attn_cp": 0, "moe_dp": 2, "tp": 5, "ep": 5},
            iter=None,
            running_req=256,
            token=537600,
            token_usage=0.81,
            pre_allocated_usage=0.02,
            prealloc_req=0,
            transfer_req=4,
            retracted_req=0,
            cuda_graph=True,
            graph_backend="cuda",
            gen_throughput=2291.34,
            queue_req=0,
        ),
        id="HEAD-prefix-DP-PP-ATTN_CP-MOE_DP-TP-EP",
    ),
    pytest.param(
        "[2026-11-29 06:35:42] Decode batch, #running-req: 55, #token: 10015, "
        "token usage: 0.04, cuda graph: True, gen throughput (token/s): 1409.29, #queue-req: 0",
        rec(
            "decode",
            "2026-11-29 06:35:42",
            1795934142.0,
            iter=None,
            running_req=55,
            token=10015,
            token_usage=0.04,
            cuda_graph=True,
            graph_backend="cuda",
            gen_throughput=1409.29,
            queue_req=0,
        ),
        id="0.5.17-no-prefix",
    ),
    pytest.param(
        "1795935349.194728 [2026-11-29 06:55:49] Decode batch, #running-req: 64, "
        "#token: 9245, token usage: 0.00, cuda graph: True, gen throughput (token/s): 31000.12, "
        "#queue-req: 0",
        rec(
            "decode",
            "2026-11-29 06:55:49",
            1795935349.0,
            arrival=1795935349.194728,
            iter=None,
            running_req=64,
            token=9245,
            token_usage=0.0,
            cuda_graph=True,
            graph_backend="cuda",
            gen_throughput=31000.12,
            queue_req=0,
        ),
        id="arrival-prefix",
    ),
]

# ---------------------------------------------------------------------------------------
# Prefill lines (sglang.md §4.3)

PREFILL_CASES = [
    pytest.param(
        f"[{T0} DP0 TP0] Prefill batch. #new-seq: 2, #new-token: 4096, #cached-token: 0, "
        "token usage: 0.01, #running-req: 1, #unbootstrapped-req: 3, #queue-req: 4, "
        "#transferring-req: 5 ",
        rec(
            "prefill",
            T0,
            E0,
            ranks={"dp": 0, "tp": 0},
            iter=None,
            new_seq=2,
            new_token=4096,
            cached_token=0,
            token_usage=0.01,
            running_req=1,
            unbootstrapped_req=3,
            queue_req=4,
            transferring_req=5,
        ),
        id="v0.4.6.post2-PD",
    ),
    pytest.param(
        f"[{T0}] Prefill batch. #new-seq: 1, #new-token: 100, #cached-token: 28, "
        "token usage: 0.00, #running-req: 0, #queue-req: 0",
        rec(
            "prefill",
            T0,
            E0,
            iter=None,
            new_seq=1,
            new_token=100,
            cached_token=28,
            token_usage=0.0,
            running_req=0,
            queue_req=0,
        ),
        id="v0.4.6.post2-non-PD",
    ),
    pytest.param(
        f"[{T0} DP1 TP1] Prefill batch. #new-seq: 2, #new-token: 4096, #cached-token: 16, "
        "token usage: 0.01, #running-req: 1, #unbootstrapped-req: 3, #queue-req: 4, "
        "#transferring-req: 5 input throughput (token/s): 1234.56 ",
        rec(
            "prefill",
            T0,
            E0,
            ranks={"dp": 1, "tp": 1},
            iter=None,
            new_seq=2,
            new_token=4096,
            cached_token=16,
            token_usage=0.01,
            running_req=1,
            unbootstrapped_req=3,
            queue_req=4,
            transferring_req=5,
            input_throughput=1234.56,
        ),
        id="v0.4.9-PD-tail-without-commas",
    ),
    pytest.param(
        f"[{T0} DP1 TP1 EP1] Prefill batch. #new-seq: 2, #new-token: 4096, "
        "#cached-token: 16, token usage: 0.01, #running-req: 1, #unbootstrapped-req: 3, "
        "#queue-req: 4, #transferring-req: 5, input throughput (token/s): 1234.56, ",
        rec(
            "prefill",
            T0,
            E0,
            ranks={"dp": 1, "tp": 1, "ep": 1},
            iter=None,
            new_seq=2,
            new_token=4096,
            cached_token=16,
            token_usage=0.01,
            running_req=1,
            unbootstrapped_req=3,
            queue_req=4,
            transferring_req=5,
            input_throughput=1234.56,
        ),
        id="v0.5.2-trailing-comma",
    ),
    pytest.param(
        f"[{T0} DP1 TP1 EP1] Prefill batch. #new-seq: 3, #new-token: 8192, "
        "#cached-token: 0, token usage: 0.02, #running-req: 0, #queue-req: 4, "
        "#prealloc-req: 2, #inflight-req: 6, input throughput (token/s): 999.00, ",
        rec(
            "prefill",
            T0,
            E0,
            ranks={"dp": 1, "tp": 1, "ep": 1},
            iter=None,
            new_seq=3,
            new_token=8192,
            cached_token=0,
            token_usage=0.02,
            running_req=0,
            queue_req=4,
            prealloc_req=2,
            inflight_req=6,
            input_throughput=999.0,
        ),
        id="2025-10-PD-prealloc-inflight",
    ),
    pytest.param(
        f"[{T2} DP1 TP1 EP1] Prefill batch, #new-seq: 3, #new-token: 8192, "
        "#cached-token: 0, token usage: 0.02, #running-req: 0, #queue-req: 4, "
        "#prealloc-req: 2, #inflight-req: 6, input throughput (token/s): 999.00, "
        "cuda graph: False",
        rec(
            "prefill",
            T2,
            E2,
            ranks={"dp": 1, "tp": 1, "ep": 1},
            iter=None,
            new_seq=3,
            new_token=8192,
            cached_token=0,
            token_usage=0.02,
            running_req=0,
            queue_req=4,
            prealloc_req=2,
            inflight_req=6,
            input_throughput=999.0,
            cuda_graph=False,
            graph_backend="cuda",
        ),
        id="2026-01-cuda-graph-after-throughput",
    ),
    pytest.param(
        f"[{T2} DP1 TP1 EP1] Prefill batch, #new-seq: 3, #new-token: 8192, "
        "#cached-token: 0, token usage: 0.02, #running-req: 0, #queue-req: 4, "
        "#prealloc-req: 2, #inflight-req: 6, cuda graph: True, "
        "input throughput (token/s): 999.00",
        rec(
            "prefill",
            T2,
            E2,
            ranks={"dp": 1, "tp": 1, "ep": 1},
            iter=None,
            new_seq=3,
            new_token=8192,
            cached_token=0,
            token_usage=0.02,
            running_req=0,
            queue_req=4,
            prealloc_req=2,
            inflight_req=6,
            cuda_graph=True,
            graph_backend="cuda",
            input_throughput=999.0,
        ),
        id="2026-01-cuda-graph-before-throughput",
    ),
    pytest.param(
        "[2026-11-29 06:35:42] Prefill batch, #new-seq: 25, #new-token: 3286, "
        "#cached-token: 25, token usage: 0.03, #running-req: 2, #queue-req: 0, "
        "#pending-token: 0, cuda graph: False, input throughput (token/s): 83584.73",
        rec(
            "prefill",
            "2026-11-29 06:35:42",
            1795934142.0,
            iter=None,
            new_seq=25,
            new_token=3286,
            cached_token=25,
            token_usage=0.03,
            running_req=2,
            queue_req=0,
            pending_token=0,
            cuda_graph=False,
            graph_backend="cuda",
            input_throughput=83584.73,
        ),
        id="2026-04-pending-token-0.5.17-real",
    ),
    pytest.param(
        f"[{T2} DP7 TP7 EP7] Prefill batch, #new-seq: 1, #new-token: 64, "
        "#cached-token: 10048, token usage: 0.00, #running-req: 0, #queue-req: 0, "
        "#pending-token: 0, #bootstrap-req: 2, #inflight-req: 1, cuda graph: False, "
        "input throughput (token/s): 178.18",
        rec(
            "prefill",
            T2,
            E2,
            ranks={"dp": 7, "tp": 7, "ep": 7},
            iter=None,
            new_seq=1,
            new_token=64,
            cached_token=10048,
            token_usage=0.0,
            running_req=0,
            queue_req=0,
            pending_token=0,
            bootstrap_req=2,
            inflight_req=1,
            cuda_graph=False,
            graph_backend="cuda",
            input_throughput=178.18,
        ),
        id="2026-05-bootstrap-req",
    ),
    pytest.param(
        f"[{T2} DP7 TP7 EP7] Prefill batch, #new-seq: 1, #new-token: 64, "
        "#cached-token: 0, token usage: 0.00, #running-req: 0, #queue-req: 0, "
        "#pending-token: 0, #bootstrap-req: 2, #inflight-req: 1, #optimistic-req: 3, "
        "cuda graph: False, input throughput (token/s): 178.18",
        rec(
            "prefill",
            T2,
            E2,
            ranks={"dp": 7, "tp": 7, "ep": 7},
            iter=None,
            new_seq=1,
            new_token=64,
            cached_token=0,
            token_usage=0.0,
            running_req=0,
            queue_req=0,
            pending_token=0,
            bootstrap_req=2,
            inflight_req=1,
            optimistic_req=3,
            cuda_graph=False,
            graph_backend="cuda",
            input_throughput=178.18,
        ),
        id="2026-07-optimistic-req",
    ),
    pytest.param(
        f"[{T2} DP7 TP7 EP7] Prefill batch [99], #new-seq: 1, #new-token: 64, "
        "#cached-token: 0, token usage: 0.00, #running-req: 0, #queue-req: 0, "
        "#pending-token: 0, #replay-token: 64, #bootstrap-req: 2, #inflight-req: 1, "
        "#optimistic-req: 0, cuda graph: False, input throughput (token/s): 178.18, "
        "est. prefill TFLOPS/s (per GPU): 9.90, fwd occupancy: 12.25%",
        rec(
            "prefill",
            T2,
            E2,
            ranks={"dp": 7, "tp": 7, "ep": 7},
            iter=99,
            new_seq=1,
            new_token=64,
            cached_token=0,
            token_usage=0.0,
            running_req=0,
            queue_req=0,
            pending_token=0,
            replay_token=64,
            bootstrap_req=2,
            inflight_req=1,
            optimistic_req=0,
            cuda_graph=False,
            graph_backend="cuda",
            input_throughput=178.18,
            est_prefill_tflops_per_gpu=9.9,
            fwd_occupancy=12.25,
        ),
        id="0.5.23-replay-token-iter-tails",
    ),
]

# ---------------------------------------------------------------------------------------
# Other kinds (sglang.md §4.4)

OTHER_CASES = [
    pytest.param(
        f"[{T1} DP0 TP0 EP0] Profiling starts. Traces will be saved to: /lustre/x/../prof "
        "(with profile id: 1763864666.7494524)",
        rec(
            "profile_start",
            T1,
            E1,
            ranks={"dp": 0, "tp": 0, "ep": 0},
            stage=None,
            output_dir="/lustre/x/../prof",
            profile_id="1763864666.7494524",
        ),
        id="profile-start",
    ),
    pytest.param(
        f"[{T1} DP2 TP2 EP2] Profiling starts for DECODE. Traces will be saved to: "
        "/tmp/my dir (run 1) (with profile id: abc-1)",
        rec(
            "profile_start",
            T1,
            E1,
            ranks={"dp": 2, "tp": 2, "ep": 2},
            stage="DECODE",
            output_dir="/tmp/my dir (run 1)",
            profile_id="abc-1",
        ),
        id="profile-start-stage-dir-with-spaces-and-parentheses",
    ),
    pytest.param(
        f"[{T2}] Profiling starts for decode. Traces will be saved to: /tmp/p "
        "(with profile id: 1769947200.5)",
        rec(
            "profile_start",
            T2,
            E2,
            stage="decode",
            output_dir="/tmp/p",
            profile_id="1769947200.5",
        ),
        id="profile-start-v2-lowercase-stage",
    ),
    pytest.param(
        f"[{T0} TP0] Profiling starts. Traces will be saved to: /tmp (with id 1745834400.25)",
        rec(
            "profile_start",
            T0,
            E0,
            ranks={"tp": 0},
            stage=None,
            output_dir="/tmp",
            profile_id="1745834400.25",
        ),
        id="profile-start-v0.4.6.post2",
    ),
    pytest.param(
        f"[{T1} DP3 TP3 EP3] Stop profiling...",
        rec("profile_stop", T1, E1, ranks={"dp": 3, "tp": 3, "ep": 3}, stage=None),
        id="profile-stop",
    ),
    pytest.param(
        f"[{T1} DP3 TP3 EP3] Stop profiling-DECODE...",
        rec("profile_stop", T1, E1, ranks={"dp": 3, "tp": 3, "ep": 3}, stage="DECODE"),
        id="profile-stop-stage",
    ),
    pytest.param(
        f"[{T1} DP1 TP1 EP1] Profiling done. Traces are saved to: /tmp/prof",
        rec(
            "profile_done",
            T1,
            E1,
            ranks={"dp": 1, "tp": 1, "ep": 1},
            output_dir="/tmp/prof",
            merge_message=None,
            merged_trace=None,
        ),
        id="profile-done",
    ),
    pytest.param(
        f"[{T1} DP0 TP0 EP0] Profiling done. Traces are saved to: /tmp/a b (1) Merged trace: "
        "/tmp/a b (1)/merged-42.trace.json.gz (Events: 1000, Files: 4)",
        rec(
            "profile_done",
            T1,
            E1,
            ranks={"dp": 0, "tp": 0, "ep": 0},
            output_dir="/tmp/a b (1)",
            merge_message="Merged trace: /tmp/a b (1)/merged-42.trace.json.gz "
            "(Events: 1000, Files: 4)",
            merged_trace="/tmp/a b (1)/merged-42.trace.json.gz",
        ),
        id="profile-done-merged",
    ),
    pytest.param(
        f"[{T1}] Profiling done. Traces are saved to: /tmp/x Merge failed: no traces found",
        rec(
            "profile_done",
            T1,
            E1,
            output_dir="/tmp/x",
            merge_message="Merge failed: no traces found",
            merged_trace=None,
        ),
        id="profile-done-merge-failed",
    ),
    pytest.param(
        f"[{T1} DP2 TP2 EP2] Scheduler.run_batch sleep 180.0s",
        rec("slow_down", T1, E1, ranks={"dp": 2, "tp": 2, "ep": 2}, sleep_s=180.0),
        id="slow-down",
    ),
    pytest.param(
        "[2026-11-29 06:35:14] Scheduler.run_batch sleep 0.5s",
        rec("slow_down", "2026-11-29 06:35:14", 1795934114.0, sleep_s=0.5),
        id="slow-down-no-prefix",
    ),
    pytest.param(
        f"[{T1}] The server is fired up and ready to roll!",
        rec("ready", T1, E1),
        id="ready",
    ),
    pytest.param(
        "\r  0%|          | 0/12 [00:00<?, ?it/s]\rCapturing batches (bs=64):   0%|  "
        "| 0/12 [00:00<?, ?it/s][2026-11-29 06:34:45] Scheduler.run_batch sleep 5.0s",
        rec("slow_down", "2026-11-29 06:34:45", 1795934085.0, sleep_s=5.0),
        id="glued-after-progress-bar",
    ),
    pytest.param(
        "1795934795.551548   0%|          | 0/12 [00:00<?, ?it/s][2026-11-29 06:46:35] "
        "The server is fired up and ready to roll!",
        rec("ready", "2026-11-29 06:46:35", 1795934795.0, arrival=1795934795.551548),
        id="glued-after-progress-bar-with-arrival",
    ),
    # Online EPLB (sglang/srt/eplb/eplb_manager.py): timed when all layers move at once.
    pytest.param(
        f"[{T1} DP3 TP3 EP3] [EPLBManager] rebalance start",
        rec("eplb_rebalance_start", T1, E1, ranks={"dp": 3, "tp": 3, "ep": 3}),
        id="eplb-rebalance-start",
    ),
    pytest.param(
        f"[{T1} DP3 TP3 EP3] [EPLBManager] rebalance end time=2.417s",
        rec("eplb_rebalance_end", T1, E1, ranks={"dp": 3, "tp": 3, "ep": 3}, seconds=2.417),
        id="eplb-rebalance-end-timed",
    ),
    pytest.param(
        f"[{T1} DP0 TP0 EP0] [EPLBManager] rebalance end",
        rec("eplb_rebalance_end", T1, E1, ranks={"dp": 0, "tp": 0, "ep": 0}, seconds=None),
        id="eplb-rebalance-end-by-chunks",
    ),
    # /flush_cache (sglang/srt/managers/scheduler.py, v0.4.6.post3 to v0.5.23): the one
    # line per scheduler that tells whether decode was empty. The refusal goes through
    # the root logger (logging.warning), the success through the scheduler's.
    pytest.param(
        f"[{T1} DP5 TP5 EP5] Cache flushed successfully!",
        rec("cache_flushed", T1, E1, ranks={"dp": 5, "tp": 5, "ep": 5}),
        id="cache-flushed",
    ),
    pytest.param(
        f"[{T1} DP2 TP2 EP2] Cache not flushed because there are pending requests. "
        "#queue-req: 3, #running-req: 17",
        rec("cache_not_flushed", T1, E1, ranks={"dp": 2, "tp": 2, "ep": 2}, queue_req=3,
            running_req=17),
        id="cache-not-flushed",
    ),
    pytest.param(
        "Cache not flushed because there are pending requests. #queue-req: 0, "
        "#running-req: 1",
        rec("cache_not_flushed", None, None, queue_req=0, running_req=1),
        id="cache-not-flushed-root-logger-without-prefix",
    ),
    # SGLang 0.5.17 on an H100 (tests/data/real-runs): a streamed prompt past the context.
    pytest.param(
        "[2026-12-05 15:43:38] [http_server] Error: Requested token count exceeds the "
        "model's maximum context length of 2048 tokens. You requested a total of 2108 "
        "tokens: 316 tokens from the input messages and 1792 tokens for the completion.",
        rec("request_refused", "2026-12-05 15:43:38", 1796485418.0,
            message="Requested token count exceeds the model's maximum context length of "
                    "2048 tokens. You requested a total of 2108 tokens: 316 tokens from the "
                    "input messages and 1792 tokens for the completion."),
        id="request-refused-http-server",
    ),
    # wheel 0.4.6.post3: logger.error(f"Error: {e}") without the [http_server] mark.
    pytest.param(
        f"[{T0}] Error: The input (4100 tokens) is longer than the model's context length "
        "(4096 tokens).",
        rec("request_refused", T0, E0, message="The input (4100 tokens) is longer than the "
            "model's context length (4096 tokens)."),
        id="request-refused-before-0.4.7",
    ),
]


ALL_CASES = DECODE_CASES + PREFILL_CASES + OTHER_CASES


@pytest.mark.parametrize(("line", "expected"), ALL_CASES)
def test_parse_line_dialects(line, expected):
    # First read: the general path.  A batch line whose bracket starts the line also
    # teaches the parser its layout, and the second read takes that compiled layout.
    loglines._plans.clear()
    assert parse_line(line) == expected
    learned = len(loglines._plans)
    if expected["kind"] in ("decode", "prefill") and line.lstrip("0123456789. ")[0] == "[":
        assert learned == 1
    else:
        assert learned == 0
    assert parse_line(line) == expected
    assert parse_line(line + "\n") == expected


def test_layouts_do_not_leak_into_each_other():
    loglines._plans.clear()
    for _ in range(2):
        for param in ALL_CASES:
            line, expected = param.values
            assert parse_line(line) == expected, param.id


def test_layout_with_an_unexpected_value_falls_back():
    loglines._plans.clear()
    good = (
        f"[{T2}] Decode batch, #running-req: 3, #token: 30, token usage: 0.00, "
        "cuda graph: True, gen throughput (token/s): 9.00, #queue-req: 0"
    )
    assert parse_line(good)["running_req"] == 3
    # A value that is no count (or no finite rate) is kept apart, never used as one.
    assert parse_line(good.replace("#running-req: 3", "#running-req: 2.5")) == rec(
        "decode", T2, E2,
        iter=None, token=30, token_usage=0.0, cuda_graph=True,
        graph_backend="cuda", gen_throughput=9.0, queue_req=0,
        invalid_fields={"running_req": "2.5"},
    )  # fmt: skip
    assert parse_line(good.replace("token usage: 0.00", "token usage: n/a")) == rec(
        "decode", T2, E2,
        iter=None, running_req=3, token=30, cuda_graph=True,
        graph_backend="cuda", gen_throughput=9.0, queue_req=0,
        invalid_fields={"token_usage": "n/a"},
    )  # fmt: skip
    r = parse_line(good)
    assert (r["running_req"], r["token_usage"]) == (3, 0.0)
    assert (type(r["running_req"]), type(r["token_usage"])) == (int, float)
    assert len(loglines._plans) == 1


@pytest.mark.parametrize("ending", ["\n", "\r\n"])
def test_line_endings_are_ignored(ending):
    line = DECODE_CASES[-3].values[0]
    assert parse_line(line + ending) == DECODE_CASES[-3].values[1]
    line = OTHER_CASES[1].values[0]
    assert parse_line(line + ending) == OTHER_CASES[1].values[1]


def test_every_kind_is_covered_and_known():
    kinds = {p.values[1]["kind"] for p in DECODE_CASES + PREFILL_CASES + OTHER_CASES}
    assert kinds == set(KINDS)
    assert KINDS == (
        "decode",
        "prefill",
        "profile_start",
        "profile_stop",
        "profile_done",
        "slow_down",
        "ready",
        "eplb_rebalance_start",
        "eplb_rebalance_end",
        "cache_flushed",
        "cache_not_flushed",
        "request_refused",
    )


def test_value_types():
    r = parse_line(DECODE_CASES[6].values[0])
    assert type(r["running_req"]) is int
    assert type(r["token_usage"]) is float
    assert type(r["cuda_graph"]) is bool
    assert type(r["epoch"]) is float
    assert type(r["dp"]) is int


def test_occupancy_nan():
    r = parse_line(
        f"[{T2}] Decode batch, #running-req: 1, #token: 1, token usage: 0.00, cuda graph: True, "
        "gen throughput (token/s): 1.00, #queue-req: 0, fwd occupancy: nan%"
    )
    # SGLang prints nan% before a forward has run: not a number to use, kept apart.
    assert "fwd_occupancy" not in r and r["invalid_fields"] == {"fwd_occupancy": "nan%"}
    assert r["queue_req"] == 0


def test_epoch_ignores_local_time_zone(monkeypatch):
    import time

    monkeypatch.setenv("TZ", "America/Los_Angeles")
    time.tzset()
    try:
        r = parse_line("[2031-03-04 05:06:07.5] The server is fired up and ready to roll!")
    finally:
        monkeypatch.undo()
        time.tzset()
    assert r["epoch"] == 1930367167.5
    assert r["time"] == "2031-03-04 05:06:07.5"


# ---------------------------------------------------------------------------------------
# Prefixes and launcher wrappers (loglines.PREFIXES, loglines.WRAPPERS)

T3 = "2026-01-01 12:00:00"
E3 = 1767268800.0
BODY = (
    "Decode batch, #running-req: 7, #token: 70, token usage: 0.01, cuda graph: True, "
    "gen throughput (token/s): 7.00, #queue-req: 0"
)
BODY_FIELDS = dict(
    iter=None, running_req=7, token=70, token_usage=0.01, cuda_graph=True,
    graph_backend="cuda", gen_throughput=7.0, queue_req=0,
)  # fmt: skip
R000 = {"dp": 0, "tp": 0, "ep": 0}
READY = "The server is fired up and ready to roll!"

PREFIX_CASES = [
    pytest.param(BODY, rec("decode", None, None, **BODY_FIELDS), id="none"),
    pytest.param(f"[{T3}][scheduler_metrics_mixin.py:245][INFO]: {BODY}",
                 rec("decode", T3, E3, **BODY_FIELDS), id="file-line-level"),
    pytest.param(f"[{T3}.123 DP0 TP0 EP0][scheduler.py:1][INFO] {BODY}",
                 rec("decode", T3 + ".123", E3 + 0.123, ranks=R000, **BODY_FIELDS),
                 id="file-line-level-ms-ranks"),
    pytest.param(f"{T3},250 INFO 4242 [scheduler.py:1500] {BODY}",
                 rec("decode", T3 + ",250", E3 + 0.25, **BODY_FIELDS),
                 id="logging-config-example"),
    pytest.param(f"[{T3}.123 DP0 TP0 EP0] {BODY}",
                 rec("decode", T3 + ".123", E3 + 0.123, ranks=R000, **BODY_FIELDS),
                 id="SGLANG_LOG_MS"),
    pytest.param(f"{T3} INFO 31223 [DP3 TP3 EP3 scheduler_metrics_mixin.py:222] {BODY}",
                 rec("decode", T3, E3, ranks={"dp": 3, "tp": 3, "ep": 3}, **BODY_FIELDS),
                 id="logging-config-with-ranks"),
    pytest.param(f"{T3} INFO 8900 [ DP15 TP15 EP15 scheduler_metrics_mixin.py:222] {BODY}",
                 rec("decode", T3, E3, ranks={"dp": 15, "tp": 15, "ep": 15}, **BODY_FIELDS),
                 id="logging-config-with-padded-ranks"),
    pytest.param(f"[04:40:55 TP0] {BODY}",
                 rec("decode", "04:40:55", None, ranks={"tp": 0}, **BODY_FIELDS),
                 id="time-only-2024"),
    pytest.param(f"0: [{T3} DP0 TP0 EP0] {BODY}",
                 rec("decode", T3, E3, ranks=R000, **BODY_FIELDS), id="srun-label"),
    pytest.param(f" 12: [{T3} DP0 TP0 EP0] {BODY}",
                 rec("decode", T3, E3, ranks=R000, **BODY_FIELDS), id="srun-label-padded"),
    pytest.param(f"\x1b[36m(SGLangEngine pid=1234)\x1b[0m [{T3} DP0 TP0 EP0] {BODY}",
                 rec("decode", T3, E3, ranks=R000, **BODY_FIELDS), id="ray-actor-ansi"),
    pytest.param(f"(Actor pid=77, ip=10.1.2.3) [{T3}] {READY}",
                 rec("ready", T3, E3), id="ray-actor-ip-ready"),
    pytest.param(f"2026-01-01T12:00:01.500000Z [{T3} DP0 TP0 EP0] {BODY}",
                 rec("decode", T3, E3, arrival=E3 + 1.5, ranks=R000, **BODY_FIELDS),
                 id="iso-time"),
    pytest.param(f"[2026-01-01 12:00:02] [{T3} DP0 TP0 EP0] {BODY}",
                 rec("decode", T3, E3, arrival=E3 + 2, ranks=R000, **BODY_FIELDS),
                 id="bracket-time"),
    pytest.param(f"Jan 01 12:00:03 [{T3}] {READY}", rec("ready", T3, E3), id="ts-default"),
    pytest.param(f"2026-01-01T13:00:00+01:00 \x1b[1m 3: \x1b[0m(SGLangEngine pid=9) "
                 f"[{T3} DP0 TP0 EP0] {BODY}\n",
                 rec("decode", T3, E3, arrival=E3, ranks=R000, **BODY_FIELDS),
                 id="stacked-iso-srun-ray"),
    pytest.param(f"INFO:     {READY}", rec("ready", None, None), id="uvicorn-ready"),
    pytest.param(f"[{T3}] INFO:     {READY}", rec("ready", T3, E3), id="uvicorn-ready-prefixed"),
    pytest.param(f"\x1b[32mINFO\x1b[0m:     {READY}", rec("ready", None, None),
                 id="uvicorn-ready-coloured"),
    pytest.param("Scheduler.run_batch sleep 2.5s", rec("slow_down", None, None, sleep_s=2.5),
                 id="none-sleep"),
]


@pytest.mark.parametrize(("line", "expected"), PREFIX_CASES)
def test_prefixes_and_wrappers(line, expected):
    loglines._plans.clear()
    assert parse_line(line) == expected
    # A wrapped batch line in the standard prefix teaches its layout too; the second
    # read (through that layout) gives the same record.
    assert parse_line(line) == expected


def test_a_wrapped_log_takes_the_compiled_layout():
    loglines._plans.clear()
    parse_line(f"0: [{T3} DP0 TP0 EP0] {BODY}")
    assert len(loglines._plans) == 1
    body = BODY.replace("#running-req: 7", "#running-req: 9")
    again = parse_line(f"5: [{T3} DP5 TP5 EP5] {body}")
    assert again["running_req"] == 9 and again["dp"] == 5 and len(loglines._plans) == 1


def test_a_wrapper_time_that_is_no_date_gives_no_arrival():
    for wrapper in ("2026-13-01T12:00:00Z ", "[2026-02-30 12:00:00] "):
        assert parse_line(f"{wrapper}[{T3}] {READY}") == rec("ready", T3, E3)


def test_prefix_table_names():
    assert [name for name, _p, _why in loglines.PREFIXES] == [
        "sglang", "sglang-file-level", "logging-config-example", "sglang-time-only", "none",
    ]
    assert [name for name, _p, _ex in loglines.WRAPPERS] == [
        "arrival-epoch", "srun-label", "ray-actor", "iso-time", "bracket-time", "ts-default",
    ]


# ---------------------------------------------------------------------------------------
# Hybrid KV pools: every pool by name, token/token_usage from the full-attention pool

HYBRID_CASES = [
    pytest.param(
        f"[{T2} TP0] Prefill batch, #new-seq: 12, #new-token: 43008, #cached-token: 0, "
        "full token usage: 0.14, mamba usage: 0.20, #running-req: 1, #queue-req: 97, "
        "#pending-token: 109585, npu graph: False, input throughput (token/s): 15734.14",
        rec("prefill", T2, E2, ranks={"tp": 0}, iter=None, new_seq=12, new_token=43008,
            cached_token=0, full_token_usage=0.14, mamba_usage=0.2, token_usage=0.14,
            running_req=1, queue_req=97, pending_token=109585, cuda_graph=False,
            graph_backend="npu", input_throughput=15734.14),
        id="prefill-mamba",
    ),
    pytest.param(
        f"[{T2}] Prefill batch. #new-seq: 1, #new-token: 8, #cached-token: 0, "
        "full token usage: 0.01, swa token usage: 0.02, #running-req: 0, #queue-req: 0, ",
        rec("prefill", T2, E2, iter=None, new_seq=1, new_token=8, cached_token=0,
            full_token_usage=0.01, swa_token_usage=0.02, token_usage=0.01, running_req=0,
            queue_req=0),
        id="prefill-swa",
    ),
    pytest.param(
        f"[{T2}] Decode batch, #running-req: 4, #full token: 1000, full token usage: 0.01, "
        "#swa token: 500, swa token usage: 0.02, mamba num: 3, mamba usage: 0.25, "
        "cuda graph: True, gen throughput (token/s): 9.00, #queue-req: 0",
        rec("decode", T2, E2, iter=None, running_req=4, full_token=1000,
            full_token_usage=0.01, swa_token=500, swa_token_usage=0.02, mamba_num=3,
            mamba_usage=0.25, token=1000, token_usage=0.01, cuda_graph=True,
            graph_backend="cuda", gen_throughput=9.0, queue_req=0),
        id="decode-swa-and-mamba",
    ),
    pytest.param(
        f"[{T2}] Decode batch, #running-req: 5, #gpu token: 20800, gpu token usage: 0.29, "
        "#cpu token: 90000, cpu token usage: 0.10, cuda graph: True, "
        "gen throughput (token/s): 144.95, #queue-req: 0",
        rec("decode", T2, E2, iter=None, running_req=5, gpu_token=20800,
            gpu_token_usage=0.29, cpu_token=90000, cpu_token_usage=0.1, token=20800,
            token_usage=0.29, cuda_graph=True, graph_backend="cuda", gen_throughput=144.95,
            queue_req=0),
        id="decode-hisparse",
    ),
    pytest.param(
        f"[{T2}] Decode batch, #running-req: 5, #full token: 100, full token usage: 0.05, "
        "mamba num: 5, mamba usage: 0.50, #gpu token: 80, gpu token usage: 0.40, "
        "#cpu token: 9, cpu token usage: 0.01, cuda graph: True, "
        "gen throughput (token/s): 5.00, #queue-req: 0",
        rec("decode", T2, E2, iter=None, running_req=5, full_token=100,
            full_token_usage=0.05, mamba_num=5, mamba_usage=0.5, gpu_token=80,
            gpu_token_usage=0.4, cpu_token=9, cpu_token_usage=0.01, token=100,
            token_usage=0.05, cuda_graph=True, graph_backend="cuda", gen_throughput=5.0,
            queue_req=0),
        id="decode-mamba-and-hisparse-full-pool-wins",
    ),
]


@pytest.mark.parametrize(("line", "expected"), HYBRID_CASES)
def test_hybrid_pools(line, expected):
    loglines._plans.clear()
    assert parse_line(line) == expected
    assert len(loglines._plans) == 1
    assert parse_line(line) == expected  # through the compiled layout


def test_a_bad_full_pool_value_leaves_no_total():
    line = HYBRID_CASES[2].values[0].replace("#full token: 1000", "#full token: -1")
    r = parse_line(line)
    assert r["invalid_fields"] == {"full_token": "-1"}
    assert "token" not in r and "full_token" not in r and r["token_usage"] == 0.01


# ---------------------------------------------------------------------------------------
# Garbled lines: unknown labels are kept apart, never made into fields

GARBLED_CASES = [
    pytest.param(
        f"[{T2} TP0] Decode batch, #running-req: 45, #token: 44672, token usaccept rate: 0.32, "
        "npu graph: False, gen throughput (token/s): 863.65, #queue-req",
        rec("decode", T2, E2, ranks={"tp": 0}, iter=None, running_req=45, token=44672,
            cuda_graph=False, graph_backend="npu", gen_throughput=863.65,
            unknown_fields={"token usaccept rate": "0.32", "#queue-req": ""}),
        id="cut-and-joined-labels",
    ),
    pytest.param(
        f"[{T2} DP0] Decode batch, #running-rq: 5, #token: 50, token usage: 0.01, "
        "cuda graph: True, gen throughput (token/s): 1.00, #queue-req: 0",
        rec("decode", T2, E2, ranks={"dp": 0}, iter=None, token=50, token_usage=0.01,
            cuda_graph=True, graph_backend="cuda", gen_throughput=1.0, queue_req=0,
            unknown_fields={"#running-rq": "5"}),
        id="misspelt-label",
    ),
    pytest.param(
        f"[{T2} DP0] Decode batch, #running-req: 5, #runn[{T2} DP1] Decode batch, "
        "#running-req: 7, #token: 70, token usage: 0.01, #queue-req: 0",
        rec("decode", T2, E2, ranks={"dp": 0}, iter=None, running_req=5,
            unknown_fields={"#runn": ""}),
        id="another-record-written-into-it",
    ),
    pytest.param(
        f"[{T2}] Decode batch, #running-req: 5, #token: 50, #running-req: 6, #queue-req: 0",
        rec("decode", T2, E2, iter=None, running_req=5, token=50, queue_req=0,
            unknown_fields={"#running-req": "6"}),
        id="label-printed-twice",
    ),
]


@pytest.mark.parametrize(("line", "expected"), GARBLED_CASES)
def test_garbled_lines(line, expected):
    loglines._plans.clear()
    assert parse_line(line) == expected
    assert loglines._plans == []  # a garbled layout is never compiled


def test_field_problems_counts_lines_per_label():
    records = [parse_line(p.values[0]) for p in GARBLED_CASES + GARBLED_CASES[:1]]
    records.append(parse_line(f"[{T2}] Decode batch, #running-req: nan, #queue-req: 0"))
    records.append(None)  # parse_line's answer for other lines is skipped
    assert loglines.field_problems(records) == {
        "unknown_fields": {"token usaccept rate": 2, "#queue-req": 2, "#running-rq": 1,
                           "#runn": 1, "#running-req": 1},
        "invalid_fields": {"running_req": 1},
    }
    assert loglines.field_problems([]) == {"unknown_fields": {}, "invalid_fields": {}}


@pytest.mark.parametrize(
    "line",
    [
        "",
        "\n",
        "/sgl-workspace/sglang/python/sglang/srt/environ.py:337: UserWarning: Decode batch",
        "  warnings.warn(",
        "[Gloo] Rank 0 is connected to 47 peer ranks. Expected number of connected peer ranks",
        "Traceback (most recent call last): Profiling starts",
        f"[{T1} DP1 TP1 EP1] Init torch distributed begin.",
        f"[{T1} DP0 TP0 EP0] Capture cuda graph bs [1024]",
        f"[{T1}] server_args=ServerArgs(model_path='x', enable_dp_lm_head=False, "
        "decode_log_interval=1, max_prefill_tokens=16384, prefill batch=1)",
        f'[{T1}] INFO:     10.0.0.1:48432 - "POST /start_profile HTTP/1.1" 200 OK',
        f"[{T1}] Decode batch size is adjusted to 64",
        f"[{T1}] Decode batch",
        f"[{T1}] Decode batches, #running-req: 1",
        f"[{T1}] Profiling starts. Traces will be saved to somewhere else",
        f"[{T1}] Paused profiling-DECODE; will resume toward its target step count.",
        f"[{T1}] Stop profiling now",
        f"[{T1}] Scheduler.run_batch sleep forever",
        f"[{T1}] The server is fired up and ready to roll! (not really)",
        f"[{T1}] End of warmup, resp: [{{'text': 'The server is fired up and ready to roll!'}}]",
        "[2025-11-22] Decode batch, #running-req: 1",
        "[2025-13-45 99:99:99] The server is fired up and ready to roll!",
        "[2026-02-30 12:00:00 DP0] Decode batch, #running-req: 1, #queue-req: 0",
        # An error that is not the HTTP server's refusal of a request.
        f"[{T1}] OpenAI Responses API (/v1/responses) disabled: OpenAIServingResponses init "
        "failed (ModuleNotFoundError: No module named 'openai_harmony')",
        f"[{T1}] ValueError: Error: nested",
    ],
)
def test_unrecognised_lines(line):
    assert parse_line(line) is None


# ---------------------------------------------------------------------------------------
# iter_log on files of our own


SAMPLE = (
    "/some/warning.py:1: UserWarning: hello\n"
    f"[{T1} DP0 TP0 EP0] Decode batch, #running-req: 1, #token: 64, token usage: 0.00, "
    "cuda graph: True, gen throughput (token/s): 0.42, #queue-req: 0, \n"
    "\rLoading shards:  50% Completed | 1/2\rLoading shards: 100% Completed | 2/2\n"
    f"[{T1}] The server is fired up and ready to roll!\r\n"
    "caf\u00e9 \u2588\u2588 progress\n"
    f"[{T1} DP1 TP1 EP1] Scheduler.run_batch sleep 2.5s"
)


def _check_sample(records, path):
    assert [(r["kind"], r["line"]) for r in records] == [
        ("decode", 2),
        ("ready", 4),
        ("slow_down", 6),
    ]
    assert all(r["file"] == str(path) for r in records)
    assert records[0]["running_req"] == 1
    assert records[0]["dp"] == 0
    assert records[2]["sleep_s"] == 2.5
    assert records[2]["dp"] == 1


def test_iter_log_plain(tmp_path):
    path = tmp_path / "server.log"
    path.write_text(SAMPLE, encoding="utf-8", newline="")
    _check_sample(list(iter_log(path)), path)
    _check_sample(list(iter_log(str(path))), path)


def test_iter_log_gzip_detected_by_content_not_name(tmp_path):
    gz = tmp_path / "server.log"  # gzip data, plain name
    gz.write_bytes(gzip.compress(SAMPLE.encode()))
    _check_sample(list(iter_log(gz)), gz)
    plain = tmp_path / "server.log.gz"  # plain data, gzip name
    plain.write_text(SAMPLE, encoding="utf-8", newline="")
    _check_sample(list(iter_log(plain)), plain)


def test_iter_log_tolerates_a_few_bad_bytes(tmp_path):
    path = tmp_path / "server.log"
    path.write_bytes(b"latin-1 caf\xe9\n" + SAMPLE.encode())
    assert [r["line"] for r in iter_log(path)] == [3, 5, 7]


def test_iter_log_empty_file(tmp_path):
    path = tmp_path / "empty.log"
    path.write_bytes(b"")
    assert list(iter_log(path)) == []


def _raises_naming(path):
    return pytest.raises(InputError, match=re.escape(str(path)))


def test_missing_file(tmp_path):
    path = tmp_path / "nope.log"
    with _raises_naming(path):
        iter_log(path)  # raised at the call, before any iteration


def test_directory(tmp_path):
    with _raises_naming(tmp_path):
        iter_log(tmp_path)


def test_binary_garbage(tmp_path):
    path = tmp_path / "garbage.log"
    path.write_bytes(bytes(range(256)) * 64)
    with _raises_naming(path):
        iter_log(path)  # raised at the call, before any iteration


def test_binary_garbage_without_nul(tmp_path):
    path = tmp_path / "garbage.log"
    path.write_bytes(bytes(range(128, 256)) * 64)
    with _raises_naming(path):
        iter_log(path)  # raised at the call, before any iteration


def test_gzip_of_binary_garbage(tmp_path):
    path = tmp_path / "garbage.log.gz"
    path.write_bytes(gzip.compress(bytes(range(256)) * 64))
    with _raises_naming(path):
        iter_log(path)  # raised at the call, before any iteration


def test_truncated_gzip_small(tmp_path):
    path = tmp_path / "cut.log.gz"
    data = gzip.compress(SAMPLE.encode() * 10)
    path.write_bytes(data[: len(data) // 2])
    with _raises_naming(path):
        iter_log(path)  # raised at the call, before any iteration


def test_corrupt_gzip(tmp_path):
    path = tmp_path / "bad.log"
    path.write_bytes(b"\x1f\x8b" + b"not really deflate data" * 10)
    with _raises_naming(path):
        iter_log(path)


def test_truncated_gzip_large(tmp_path):
    lines = "".join(
        f"[{T1} DP{i % 4} TP{i % 4} EP{i % 4}] Decode batch, #running-req: {i}, #token: {i * 7}, "
        f"token usage: 0.{i % 100:02d}, cuda graph: True, gen throughput (token/s): {i}.5, "
        f"#queue-req: {i % 13}\n"
        for i in range(20000)
    )
    data = gzip.compress(lines.encode())
    path = tmp_path / "cut.log.gz"
    path.write_bytes(data[: len(data) * 3 // 4])
    seen = []
    with _raises_naming(path):
        for r in iter_log(path):
            seen.append(r)
    assert len(seen) > 1000  # the records before the cut still came out
    assert seen[10]["running_req"] == 10


# ---------------------------------------------------------------------------------------
# Real logs (/work/shared/fixtures)


def _grep_count(pattern, path):
    out = subprocess.run(["grep", "-c", pattern, str(path)], capture_output=True, text=True)
    return int(out.stdout.strip() or 0)


def test_gb200_profile_starts(shared_fixtures):
    records = list(iter_log(shared_fixtures / GB200_LOG))
    starts = [r for r in records if r["kind"] == "profile_start"]
    assert len(starts) == 4
    assert {r["profile_id"] for r in starts} == {"1763864666.7494524"}
    assert sorted(r["dp"] for r in starts) == [0, 1, 2, 3]
    assert all(r["tp"] == r["dp"] == r["ep"] and r["pp"] is None for r in starts)
    assert all(r["stage"] is None for r in starts)
    assert all(r["output_dir"].endswith("/Scripts-SGLang/../decode_torch_profiler") for r in starts)
    assert {r["time"] for r in starts} == {T1}


def test_gb200_full_batch_before_profile(shared_fixtures):
    records = list(iter_log(shared_fixtures / GB200_LOG))
    start = next(i for i, r in enumerate(records) if r["kind"] == "profile_start" and r["dp"] == 0)
    before = [r for r in records[:start] if r["kind"] == "decode" and r["dp"] == 0][-3:]
    assert len(before) == 3
    assert [r["running_req"] for r in before] == [1024, 1024, 1024]
    assert [r["gen_throughput"] for r in before] == [12015.73, 12186.35, 12106.41]
    assert all(r["queue_req"] == 952 and r["transfer_req"] == 0 for r in before)
    last = before[-1]
    assert last["line"] == 585
    assert last["cuda_graph"] is True and last["graph_backend"] == "cuda"


def test_gb200_counts_match_grep(shared_fixtures):
    path = shared_fixtures / GB200_LOG
    kinds = Counter(r["kind"] for r in iter_log(path))
    assert kinds["slow_down"] == _grep_count("Scheduler.run_batch sleep", path) == 12
    assert kinds["decode"] == _grep_count("Decode batch", path) == 799
    assert kinds["ready"] == 1
    assert kinds["profile_stop"] == 4
    assert kinds["profile_done"] == 4
    assert kinds["prefill"] == 0


def test_gb200_ready_and_sleep(shared_fixtures):
    records = list(iter_log(shared_fixtures / GB200_LOG))
    ready = [r for r in records if r["kind"] == "ready"]
    assert [(r["line"], r["time"], r["dp"]) for r in ready] == [(385, "2025-11-22 18:06:33", None)]
    sleeps = [r for r in records if r["kind"] == "slow_down"]
    assert {r["sleep_s"] for r in sleeps} == {180.0}
    assert sorted(Counter(r["dp"] for r in sleeps).items()) == [(0, 3), (1, 3), (2, 3), (3, 3)]


def test_tiny_moe_0_5_17(shared_fixtures):
    path = shared_fixtures / TINY_LOG
    records = list(iter_log(path))
    kinds = Counter(r["kind"] for r in records)
    assert kinds["prefill"] == _grep_count("Prefill batch", path) == 182
    assert kinds["decode"] == _grep_count("Decode batch", path) == 94
    assert kinds["slow_down"] == 5
    assert kinds["ready"] == kinds["profile_start"] == kinds["profile_stop"] == 1
    assert kinds["profile_done"] == 1
    assert all(r["dp"] is None and r["tp"] is None for r in records)
    first_prefill = next(r for r in records if r["kind"] == "prefill")
    assert first_prefill == rec(
        "prefill",
        "2026-11-29 06:34:52",
        1795934092.0,
        iter=None,
        new_seq=1,
        new_token=12,
        cached_token=0,
        token_usage=0.0,
        running_req=0,
        queue_req=0,
        pending_token=0,
        cuda_graph=False,
        graph_backend="cuda",
        input_throughput=2.88,
        file=str(path),
        line=41,
    )
    start = next(r for r in records if r["kind"] == "profile_start")
    assert (start["line"], start["profile_id"], start["output_dir"]) == (
        169,
        "1795934170.6705902",
        "/tmp/prof",
    )


def test_server_ts_arrival(shared_fixtures):
    path = shared_fixtures / FILL / "filled-to-64" / "server_ts.log.gz"
    records = list(iter_log(path))
    assert records and all(isinstance(r["arrival"], float) for r in records)
    start = next(r for r in records if r["kind"] == "profile_start")
    assert start["arrival"] == 1795935349.194728
    assert start["time"] == "2026-11-29 06:55:49"
    assert start["profile_id"] == "1795935349.1930616"
    # This machine logged in UTC: arrival is within a second after the printed time.
    assert all(0.0 <= r["arrival"] - r["epoch"] < 1.01 for r in records)


def test_server_ts_matches_plain_log(shared_fixtures):
    folder = shared_fixtures / FILL / "filled-to-64"
    plain = list(iter_log(folder / "server.log.gz"))
    stamped = list(iter_log(folder / "server_ts.log.gz"))
    strip = ("arrival", "file")
    assert [{k: v for k, v in r.items() if k not in strip} for r in plain] == [
        {k: v for k, v in r.items() if k not in strip} for r in stamped
    ]
    assert max(r["running_req"] for r in plain if r["kind"] == "decode") == 64


def test_stuck_at_63(shared_fixtures):
    records = list(iter_log(shared_fixtures / FILL / "stuck-at-63" / "server.log.gz"))
    decode = [r for r in records if r["kind"] == "decode"]
    assert len(decode) == 7509
    assert max(r["running_req"] for r in decode) == 63
    assert Counter(r["kind"] for r in records)["slow_down"] == 98
