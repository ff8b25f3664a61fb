# Static EPLB's recording pass (pdbench.eplb): the first 'none' point of an EP size records
# the expert distribution from before its fill until eplb.static.record_s after the
# release; the dump becomes results/{experiment}/eplb/expert_distribution.pt, which the
# static points' decode starts from (servers.smk).


rule expert_record_start:
    input:
        decode=ancient(str(PT.ready("decode"))),
    output:
        started=str(PT.expert_record_started),
    log:
        str(PT.stage_log("expert-record-start")),
    localrule: True
    conda:
        "../../envs/pdbench.yaml"
    params:
        config=CONFIG_FILE,
        point_dir=point_dir,
    shell:
        "pdbench expert-record-start --config {params.config} --point-dir {params.point_dir}"
        " > /dev/null 2> {log}"


rule expert_dump:
    input:
        unpack(get_recording_inputs),
    output:
        dump=str(EXP.expert_distribution),
        recording=str(EXP.expert_recording),
    log:
        str(EXP.stage_log("expert-dump")),
    localrule: True
    conda:
        "../../envs/pdbench.yaml"
    params:
        config=CONFIG_FILE,
        point_dir=get_recorder_dir,
    shell:
        "pdbench expert-dump --config {params.config} --point-dir {params.point_dir}"
        " > /dev/null 2> {log}"
