#!/usr/bin/env bash
# pdbench node launcher for preflight: 1 node(s), one srun task per node; the node's command is chosen by SLURM_NODEID.
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

node_id="${PDBENCH_NODE_RANK:-${SLURM_NODEID:-}}"
case "$node_id" in
  0)
    if [ -n "${SLURMD_NODENAME:-}" ] && [ "$SLURMD_NODENAME" != local0 ]; then printf 'pdbench: %s: node rank %s is planned on %s but runs on %s\n' preflight 0 local0 "$SLURMD_NODENAME" >&2; exit 4; fi
    exec python3 /work/main/results/ep1/preflight/preflight_probe.py /work/main/results/ep1/preflight/spec.json /work/main/results/ep1/preflight/probe-result.json
    ;;
  *)
    printf 'pdbench: %s: no command for SLURM_NODEID=%s (this server has 1 node(s), ids 0-0)\n' preflight "${node_id:-<unset>}" >&2
    exit 2
    ;;
esac
