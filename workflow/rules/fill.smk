# Fill the decode batch under slow_down while the client runs, then release it
# (pdbench.fill).


rule fill:
    input:
        router=str(PT.ready("router")),
        client=str(PT.client),
        expert_recording=get_recording_start,
    output:
        filled=str(PT.filled),
        curve=str(PT.fill_curve),
    log:
        str(PT.stage_log("fill")),
    localrule: True
    conda:
        "../../envs/pdbench.yaml"
    params:
        config=CONFIG_FILE,
        point_dir=point_dir,
    shell:
        "pdbench fill --config {params.config} --point-dir {params.point_dir}"
        " > /dev/null 2> {log}"


rule release:
    input:
        filled=str(PT.filled),
    output:
        released=str(PT.released),
    log:
        str(PT.stage_log("release")),
    localrule: True
    conda:
        "../../envs/pdbench.yaml"
    params:
        config=CONFIG_FILE,
        point_dir=point_dir,
    shell:
        "pdbench release --config {params.config} --point-dir {params.point_dir}"
        " > /dev/null 2> {log}"
