# Stage 2: split the allocation into prefill groups, decode and router (node_list_env.sh).


rule node_list:
    input:
        allocation=ancient(str(PT.allocation)),
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
        point_dir=point_dir,
    shell:
        "pdbench node-list --config {params.config} --point-dir {params.point_dir}"
        " > /dev/null 2> {log}"
