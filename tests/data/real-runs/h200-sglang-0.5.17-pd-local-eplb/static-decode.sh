#!/usr/bin/env bash
# pdbench node launcher for launch_server_decode: 1 node(s), one srun task per node; the node's command is chosen by SLURM_NODEID.
set -euo pipefail

export PYTHONUNBUFFERED=1
export MC_FORCE_TCP=1
export MC_TE_METRIC=true
export MOONCAKE_PROTOCOL=tcp
export SGLANG_DISAGGREGATION_BOOTSTRAP_TIMEOUT=100000
export SGLANG_DISAGGREGATION_HEARTBEAT_MAX_FAILURE=100000
export SGLANG_DISAGGREGATION_WAITING_TIMEOUT=100000
export SGLANG_HACK_SEQ_BOOTSTRAP_ROOM=1
export SGLANG_HOST_IP=127.0.0.1
export SGLANG_USE_MESSAGE_QUEUE_BROADCASTER=0
export SGL_DISABLE_TP_MEMORY_INBALANCE_CHECK=1
export SGLANG_TORCH_PROFILER_DIR=/work/main/results/ep1/p1-eplb_static/profile
export SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR=/work/main/results/ep1/p1-eplb_static/expert_distribution

node_id="${PDBENCH_NODE_RANK:-${SLURM_NODEID:-}}"
case "$node_id" in
  0)
    if [ -n "${SLURMD_NODENAME:-}" ] && [ "$SLURMD_NODENAME" != local1 ]; then printf 'pdbench: %s: node rank %s is planned on %s but runs on %s\n' launch_server_decode 0 local1 "$SLURMD_NODENAME" >&2; exit 4; fi
    mkdir -p /work/main/results/ep1/p1-eplb_static/logs
    printf 'pdbench: %s node rank %s on %s, log %s\n' launch_server_decode 0 "$(hostname)" /work/main/results/ep1/p1-eplb_static/logs/launch_server_decode_node_rank_0.log >&2
    python3 -c 'import importlib.metadata as m, json, platform
def v(n):
    try:
        return m.version(n)
    except Exception:
        return None
names = ['"'"'sglang'"'"', '"'"'sglang-router'"'"', '"'"'smg'"'"', '"'"'sgl-kernel'"'"', '"'"'torch'"'"', '"'"'flashinfer-python'"'"', '"'"'transformers'"'"', '"'"'mooncake-transfer-engine'"'"', '"'"'nixl'"'"', '"'"'deep-ep'"'"']
print(json.dumps({'"'"'python'"'"': platform.python_version(), '"'"'packages'"'"': {n: v(n) for n in names}}))' > /work/main/results/ep1/p1-eplb_static/logs/launch_server_decode_node_rank_0.versions.json 2>/dev/null || true
    exec python3 -m sglang.launch_server --model-path .cache/tiny-sglang-model --served-model-name tiny-deepseek --disaggregation-mode decode --host 0.0.0.0 --port 31900 --dist-init-addr 127.0.0.1:31990 --nnodes 1 --node-rank 0 --tp-size 1 --ep-size 1 --attention-backend triton --context-length 2048 --decode-log-interval 1 --disable-chunked-prefix-cache --disable-radix-cache --disable-shared-experts-fusion --load-format dummy --max-total-tokens 131072 --mem-fraction-static 0.3 --watchdog-timeout 1000000 --cuda-graph-bs-decode 64 --max-running-requests 64 --init-expert-location /work/main/results/ep1/eplb/expert_distribution.pt > /work/main/results/ep1/p1-eplb_static/logs/launch_server_decode_node_rank_0.log 2>&1
    ;;
  *)
    printf 'pdbench: %s: no command for SLURM_NODEID=%s (this server has 1 node(s), ids 0-0)\n' launch_server_decode "${node_id:-<unset>}" >&2
    exit 2
    ;;
esac
