# Stop the point's servers and release its allocation (pdbench.teardown).


rule teardown:
    input:
        snapshots=get_snapshots,
        bench=str(PT.bench),
        expert_dump=get_recording_dump,
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
