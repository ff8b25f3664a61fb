# Stage 3: launch prefill groups, the decode server and the router into the allocation,
# and wait until each is ready. Markers are ephemeral: they describe live processes.


rule prefill_server:
    input:
        plan=ancient(str(PT.plan)),
        expert_location=get_prefill_expert_location,
    output:
        ready=str(PT.ready("prefill-{group}")),
    log:
        str(PT.stage_log("launch-prefill-{group}")),
    localrule: True
    conda:
        "../../envs/pdbench.yaml"
    params:
        config=CONFIG_FILE,
        point_dir=point_dir,
    shell:
        "pdbench launch --config {params.config} --point-dir {params.point_dir}"
        " --server prefill-{wildcards.group} > /dev/null 2> {log}"


rule decode_server:
    input:
        plan=ancient(str(PT.plan)),
        expert_location=get_expert_location,
    output:
        ready=str(PT.ready("decode")),
    log:
        str(PT.stage_log("launch-decode")),
    localrule: True
    conda:
        "../../envs/pdbench.yaml"
    params:
        config=CONFIG_FILE,
        point_dir=point_dir,
    shell:
        "pdbench launch --config {params.config} --point-dir {params.point_dir}"
        " --server decode > /dev/null 2> {log}"


rule router:
    input:
        prefill=get_prefill_ready,
        decode=str(PT.ready("decode")),
    output:
        ready=str(PT.ready("router")),
    log:
        str(PT.stage_log("launch-router")),
    localrule: True
    conda:
        "../../envs/pdbench.yaml"
    params:
        config=CONFIG_FILE,
        point_dir=point_dir,
    shell:
        "pdbench launch --config {params.config} --point-dir {params.point_dir}"
        " --server router > /dev/null 2> {log}"
