# Stage 2: split the allocation into prefill groups, decode and router (node_list_env.sh).


rule node_list:
    input:
        allocation=ancient(f"{RESULTS}/{{experiment}}/{{point}}/allocation.json"),
    output:
        env_sh=f"{RESULTS}/{{experiment}}/{{point}}/node_list_env.sh",
        plan=f"{RESULTS}/{{experiment}}/{{point}}/plan.json",
    log:
        f"{RESULTS}/{{experiment}}/{{point}}/logs/node_list.log",
    localrule: True
    conda:
        "../../envs/pdbench.yaml"
    params:
        config=CONFIG_FILE,
    shell:
        "pdbench plan --config {params.config} --experiment {wildcards.experiment}"
        " --point {wildcards.point} --allocation {input.allocation}"
        " --env-sh {output.env_sh} --json-out {output.plan} > {log} 2>&1"
