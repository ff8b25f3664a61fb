# Stage 6: decode tokens/s per GPU, one row per snapshot, per point and per experiment.
# Analysis only: it reads the stored logs and traces and runs on the machine running
# Snakemake (never a Slurm job), so deleting its outputs and asking for the report again
# recomputes them without an allocation.


rule point_throughput:
    input:
        snapshots=get_snapshots,
        bench=str(PT.bench),
        teardown=str(PT.teardown),
    output:
        csv=report(
            str(PT.throughput),
            caption="../report/point_throughput.rst",
            category="Throughput",
            subcategory="{experiment}",
            labels={"point": "{point}"},
        ),
        measurement=str(PT.measurement),
    log:
        str(PT.stage_log("throughput")),
    localrule: True
    conda:
        "../../envs/pdbench.yaml"
    params:
        config=CONFIG_FILE,
        point_dir=point_dir,
    shell:
        "pdbench point-throughput --config {params.config} --point-dir {params.point_dir}"
        " > /dev/null 2> {log}"


rule experiment_throughput:
    input:
        csvs=get_point_csvs,
    output:
        csv=report(
            str(EXP.throughput),
            caption="../report/experiment_throughput.rst",
            category="Throughput",
            subcategory="{experiment}",
            labels={"point": "all"},
        ),
    log:
        str(EXP.stage_log("throughput")),
    localrule: True
    conda:
        "../../envs/pdbench.yaml"
    shell:
        "pdbench merge-csv {input.csvs} --out {output.csv} > /dev/null 2> {log}"
