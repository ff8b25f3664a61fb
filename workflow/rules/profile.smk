# Torch-profiler snapshots of the decode server at full batch, one after the other
# (pdbench.profile).


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
