# Stage 5: torch-profiler snapshots of the decode server at full batch (one after the
# other), the benchmark client's result, and the point's teardown.


rule profile_snapshot:
    input:
        released=str(PT.released),
        previous=get_previous_snapshot,
        decode=ancient(str(PT.ready("decode"))),
    output:
        snapshot=str(PT.snapshot("{snapshot}")),
    log:
        str(PT.stage_log("profile-{snapshot}")),
    localrule: True
    conda:
        "../../envs/pdbench.yaml"
    params:
        config=CONFIG_FILE,
        point_dir=point_dir,
    shell:
        "pdbench snapshot --config {params.config} --point-dir {params.point_dir}"
        " --snapshot {wildcards.snapshot} > /dev/null 2> {log}"


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


rule teardown:
    input:
        snapshots=get_snapshots,
        bench=str(PT.bench),
    output:
        teardown=str(PT.teardown),
    log:
        str(PT.stage_log("teardown")),
    localrule: True
    conda:
        "../../envs/pdbench.yaml"
    params:
        config=CONFIG_FILE,
        point_dir=point_dir,
    shell:
        "pdbench teardown --config {params.config} --point-dir {params.point_dir}"
        " > /dev/null 2> {log}"
