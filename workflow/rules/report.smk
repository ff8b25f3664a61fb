# Stage 8: the self-contained HTML reports (pdbench.report): one per experiment and, when
# the config has several experiments, one over the grid. The report's own code and
# template are inputs, so changing only them reruns only the reports.


rule report:
    input:
        csv=str(EXP.throughput),
        measurements=get_point_measurements,
        manifests=get_point_manifests,
        expert_distribution=get_recorded_distribution,
        code=REPORT_CODE,
    output:
        html=report(
            str(EXP.report),
            caption="../report/report.rst",
            category="Report",
            labels={"experiment": "{experiment}"},
        ),
        figures=report(
            directory(str(EXP.figures)),
            patterns=["{name}.svg"],
            caption="../report/figure.rst",
            category="Plots",
            subcategory="{experiment}",
            labels={"experiment": "{experiment}", "plot": "{name}"},
        ),
    log:
        str(EXP.stage_log("report")),
    localrule: True
    conda:
        "../../envs/pdbench.yaml"
    params:
        config=CONFIG_FILE,
    shell:
        "pdbench report --config {params.config} --csv {input.csv} --out {output.html}"
        " --figures {output.figures} > /dev/null 2> {log}"


rule grid_report:
    input:
        csvs=get_experiment_csvs,
        measurements=get_point_measurements,
        manifests=get_point_manifests,
        code=REPORT_CODE,
    output:
        html=report(
            str(RES.report),
            caption="../report/grid_report.rst",
            category="Report",
            labels={"experiment": "all"},
        ),
    log:
        str(RES.stage_log("report")),
    localrule: True
    conda:
        "../../envs/pdbench.yaml"
    params:
        config=CONFIG_FILE,
    shell:
        "pdbench report --config {params.config} --csv {input.csvs} --out {output.html}"
        " > /dev/null 2> {log}"
