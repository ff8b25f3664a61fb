# Stage 0: before any allocation of an experiment, one small job checks that the launch
# can work (container, SGLang version, server commands, model, GPUs, IB devices, ports,
# shared filesystem, secrets, the allocation request) and reports every problem at once.
# Rerun when a launch-relevant config section changes (the fingerprint parameter); the
# points depend on it as ancient(), so a rerun does not remeasure them.


rule preflight:
    output:
        preflight=str(EXP.preflight),
    log:
        str(EXP.stage_log("preflight")),
    localrule: True
    conda:
        "../../envs/pdbench.yaml"
    params:
        config=CONFIG_FILE,
        results=get_results_root,
        fingerprint=get_preflight_fingerprint,
        adopt=get_adopt_option,
    shell:
        "pdbench preflight --config {params.config} --results {params.results}"
        " --experiment {wildcards.experiment} {params.adopt} > /dev/null 2> {log}"
