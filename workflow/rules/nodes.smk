# Stage 2: split the allocation into prefill groups, decode and router (node_list_env.sh).


rule node_list:
    input:
        allocation=ancient(str(PT.allocation)),
        sweep=after_sweep(
            str(PT.env_sh),
            str(PT.plan),
        ),
    output:
        env_sh=str(PT.env_sh),
        plan=str(PT.plan),
    log:
        str(PT.stage_log("node_list")),
    localrule: True
    conda:
        "../../envs/pdbench.yaml"
    params:
        config=CONFIG_FILE,
    shell:
        "pdbench plan --config {params.config} --experiment {wildcards.experiment}"
        " --point {wildcards.point} --allocation {input.allocation}"
        " --env-sh {output.env_sh} --json-out {output.plan} > {log} 2>&1"
