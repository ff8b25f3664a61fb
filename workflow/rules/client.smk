# The benchmark client (pdbench.client): started with the servers, held at its gate while
# they load and until the fill lets it go; its result is kept only if it is valid.


rule bench_client:
    input:
        plan=ancient(str(PT.plan)),
    output:
        client=str(PT.client),
    log:
        str(PT.stage_log("start-client")),
    localrule: True
    conda:
        "../../envs/pdbench.yaml"
    params:
        config=CONFIG_FILE,
        point_dir=point_dir,
    shell:
        "pdbench start-client --config {params.config} --point-dir {params.point_dir}"
        " > /dev/null 2> {log}"


rule bench_result:
    input:
        snapshots=get_snapshots,
    output:
        jsonl=str(PT.bench),
    log:
        str(PT.stage_log("bench-result")),
    localrule: True
    conda:
        "../../envs/pdbench.yaml"
    params:
        config=CONFIG_FILE,
        point_dir=point_dir,
    shell:
        "pdbench bench-result --config {params.config} --point-dir {params.point_dir}"
        " > /dev/null 2> {log}"
