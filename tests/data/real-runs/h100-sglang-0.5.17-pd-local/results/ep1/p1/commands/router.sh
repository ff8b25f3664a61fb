#!/usr/bin/env bash
# pdbench node launcher for router: 1 node(s), one srun task per node; the node's command is chosen by SLURM_NODEID.
set -euo pipefail

node_id="${PDBENCH_NODE_RANK:-${SLURM_NODEID:-}}"
case "$node_id" in
  0)
    if [ -n "${SLURMD_NODENAME:-}" ] && [ "$SLURMD_NODENAME" != local0 ]; then printf 'pdbench: %s: node rank %s is planned on %s but runs on %s\n' router 0 local0 "$SLURMD_NODENAME" >&2; exit 4; fi
    mkdir -p /work/main/results/ep1/p1/logs
    printf 'pdbench: %s node rank %s on %s, log %s\n' router 0 "$(hostname)" /work/main/results/ep1/p1/logs/router_node_rank_0.log >&2
    python3 -c 'import importlib.metadata as m, json, platform
def v(n):
    try:
        return m.version(n)
    except Exception:
        return None
names = ['"'"'sglang'"'"', '"'"'sglang-router'"'"', '"'"'smg'"'"', '"'"'sgl-kernel'"'"', '"'"'torch'"'"', '"'"'flashinfer-python'"'"', '"'"'transformers'"'"', '"'"'mooncake-transfer-engine'"'"', '"'"'nixl'"'"', '"'"'deep-ep'"'"']
print(json.dumps({'"'"'python'"'"': platform.python_version(), '"'"'packages'"'"': {n: v(n) for n in names}}))' > /work/main/results/ep1/p1/logs/router_node_rank_0.versions.json 2>/dev/null || true
    exec python3 -m sglang_router.launch_router --pd-disaggregation --prefill http://127.0.0.1:31000 31091 --decode http://127.0.0.1:31900 --host 0.0.0.0 --port 32000 --prometheus-port 32001 --mini-lb > /work/main/results/ep1/p1/logs/router_node_rank_0.log 2>&1
    ;;
  *)
    printf 'pdbench: %s: no command for SLURM_NODEID=%s (this server has 1 node(s), ids 0-0)\n' router "${node_id:-<unset>}" >&2
    exit 2
    ;;
esac
