# Stage 7: the experiment's self-contained HTML report.


rule report:
    input:
        csv=f"{RESULTS}/{{experiment}}/throughput.csv",
    output:
        html=f"{RESULTS}/{{experiment}}/report.html",
    log:
        f"{RESULTS}/{{experiment}}/logs/report.log",
    conda:
        "../../envs/pdbench.yaml"
    params:
        config=CONFIG_FILE,
    shell:
        "pdbench report --config {params.config} --csv {input.csv} --out {output.html}"
        " > /dev/null 2> {log}"
