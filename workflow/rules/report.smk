# Stage 7: the experiment's self-contained HTML report.


rule report:
    input:
        csv=str(EXP.throughput),
    output:
        html=str(EXP.report),
    log:
        str(EXP.stage_log("report")),
    conda:
        "../../envs/pdbench.yaml"
    params:
        config=CONFIG_FILE,
    shell:
        "pdbench report --config {params.config} --csv {input.csv} --out {output.html}"
        " > /dev/null 2> {log}"
