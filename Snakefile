# pdbench: SGLang prefill/decode disaggregation with wide expert parallelism on Slurm.
#
# Before any allocation, per experiment: results/{experiment}/preflight.json, every
# check of the launch passed (one small job; pdbench.preflight).
#
# Outputs, per grid point (results/{experiment}/{point}/, e.g. results/ep48/p2/):
#   allocation.json        the Slurm allocation (ephemeral: checked for liveness)
#   node_list_env.sh       node and port plan, source-able; plan.json the same as JSON
#   ready/*.json           live prefill groups, decode server and router (ephemeral)
#   fill/filled.json       decode batch filled under slow_down while the client runs
#   fill/released.json     slow_down cleared, decode running at full batch
#   profile/{k}/           torch-profiler traces of snapshot k
#   bench/bench.jsonl      the benchmark client's result
#   throughput.csv         one row per snapshot (invalid ones with their reason)
#   measurement.json       per snapshot: per-rank batches, step periods; the fill curve
#   manifest.json          provenance: config, plan, commands, versions, stage times,
#                          GPU-hours, sha256 of every raw input
#   bench/client.json      the benchmark client, started with the servers and held
#                          until the fill lets it go
#   attempts/<time>-job<id>/  what servers that died mid-measurement left (fill, profile,
#                          bench, logs), set aside when the next run starts; kept
#                          (…-invalid-benchmark: a client result that failed the gate)
# and per experiment (results/{experiment}/): throughput.csv, report.html and figures/;
# with several experiments, results/report.html over all of them. Analysis stages
# (throughput, manifest, report) run where Snakemake runs and read only stored files.


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/preflight.smk"
include: "workflow/rules/allocation.smk"
include: "workflow/rules/nodes.smk"
include: "workflow/rules/servers.smk"
include: "workflow/rules/client.smk"
include: "workflow/rules/fill.smk"
include: "workflow/rules/profile.smk"
include: "workflow/rules/eplb.smk"
include: "workflow/rules/teardown.smk"
include: "workflow/rules/throughput.smk"
include: "workflow/rules/manifest.smk"
include: "workflow/rules/report.smk"


onstart:
    prepare_run()


onerror:
    # A failed job or Ctrl-C: stop every server step, client and holder job this tree
    # records, so nothing is left running (adopted allocations stay, their steps end).
    # With site.keep_servers_on_failure only clients and queued holders stop.
    end_run(failed=True)


onsuccess:
    end_run(failed=False)


rule all:
    default_target: True
    input:
        get_final_output(),
