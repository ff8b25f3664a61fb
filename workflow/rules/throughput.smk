# Stage 6: decode tokens/s per GPU, one row per snapshot, per point and per experiment.
# Works offline from the stored logs and traces; these jobs go to Slurm like any
# compute-only job (or run locally without an executor).


rule point_throughput:
    input:
        snapshots=get_snapshots,
        bench=str(PT.bench),
        teardown=str(PT.teardown),
    output:
        csv=str(PT.throughput),
    log:
        str(PT.stage_log("throughput")),
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
        csv=str(EXP.throughput),
    log:
        str(EXP.stage_log("throughput")),
    conda:
        "../../envs/pdbench.yaml"
    shell:
        "pdbench merge-csv {input.csvs} --out {output.csv} > /dev/null 2> {log}"
