#!/usr/bin/env bash
# pdbench local step pdbench-ep1-p1-client: one task per planned node on this host (site.launcher: local).
# A task that fails stops the others (srun --kill-on-bad-exit).
set -u
tasks=()
env PDBENCH_NODE_RANK=0 CUDA_VISIBLE_DEVICES=0 bash /work/main/results/ep1/p1/commands/client.sh &
tasks+=($!)
trap 'kill -TERM "${tasks[@]}" 2>/dev/null' TERM INT
status=0
for _ in "${tasks[@]}"; do
  wait -n
  rc=$?
  if [ "$rc" -ne 0 ]; then status=$rc; kill -TERM "${tasks[@]}" 2>/dev/null; break; fi
done
wait
exit "$status"
