#!/usr/bin/env bash
# pdbench node launcher for bench_client: 1 node(s), one srun task per node; the node's command is chosen by SLURM_NODEID.
set -euo pipefail

export PYTHONUNBUFFERED=1

node_id="${PDBENCH_NODE_RANK:-${SLURM_NODEID:-}}"
case "$node_id" in
  0)
    if [ -n "${SLURMD_NODENAME:-}" ] && [ "$SLURMD_NODENAME" != local0 ]; then printf 'pdbench: %s: node rank %s is planned on %s but runs on %s\n' bench_client 0 local0 "$SLURMD_NODENAME" >&2; exit 4; fi
    mkdir -p /work/main/results/ep1/p1/logs
    printf 'pdbench: %s node rank %s on %s, log %s\n' bench_client 0 "$(hostname)" /work/main/results/ep1/p1/logs/bench_client_node_rank_0.log >&2
    python3 -c 'import importlib.metadata as m, json, platform
def v(n):
    try:
        return m.version(n)
    except Exception:
        return None
names = ['"'"'sglang'"'"', '"'"'sglang-router'"'"', '"'"'smg'"'"', '"'"'sgl-kernel'"'"', '"'"'torch'"'"', '"'"'flashinfer-python'"'"', '"'"'transformers'"'"', '"'"'mooncake-transfer-engine'"'"', '"'"'nixl'"'"', '"'"'deep-ep'"'"']
print(json.dumps({'"'"'python'"'"': platform.python_version(), '"'"'packages'"'"': {n: v(n) for n in names}}))' > /work/main/results/ep1/p1/logs/bench_client_node_rank_0.versions.json 2>/dev/null || true
    exec python3 -c 'import runpy, signal, sys, time, warnings
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
print("pdbench-client-gate: armed; importing " + sys.argv[1], flush=True)
t0 = time.monotonic()
__import__(sys.argv[1])
print("pdbench-client-gate: imported in %.1f s; waiting for SIGUSR1" % (time.monotonic() - t0),
      flush=True)
signal.sigwait({signal.SIGUSR1})
signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # a repeated start signal is harmless
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})
print("pdbench-client-gate: released", flush=True)
sys.argv = sys.argv[1:]
warnings.filterwarnings("ignore", message=".*found in sys.modules", category=RuntimeWarning)
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
' sglang.benchmark.serving --backend sglang --base-url http://127.0.0.1:32000 --dataset-name random-ids --random-input-len 128 --random-output-len 1792 --random-range-ratio 1.0 --num-prompts 128 --request-rate inf --max-concurrency 128 --tokenize-prompt --warmup-requests 0 --tokenizer .cache/tiny-sglang-model --output-file /work/main/results/ep1/p1/bench/client-output.jsonl --model .cache/tiny-sglang-model --served-model-name tiny-deepseek > /work/main/results/ep1/p1/logs/bench_client_node_rank_0.log 2>&1
    ;;
  *)
    printf 'pdbench: %s: no command for SLURM_NODEID=%s (this server has 1 node(s), ids 0-0)\n' bench_client "${node_id:-<unset>}" >&2
    exit 2
    ;;
esac
