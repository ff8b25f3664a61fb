# Stage 6: decode tokens/s per GPU, one row per snapshot, per point and per experiment.
# Works offline from the stored logs and traces; these jobs go to Slurm like any
# compute-only job (or run locally without an executor).


rule point_throughput:
    input:
        snapshots=get_snapshots,
        bench=f"{RESULTS}/{{experiment}}/{{point}}/bench/bench.jsonl",
        teardown=f"{RESULTS}/{{experiment}}/{{point}}/teardown.json",
    output:
        csv=f"{RESULTS}/{{experiment}}/{{point}}/throughput.csv",
    log:
        f"{RESULTS}/{{experiment}}/{{point}}/logs/throughput.log",
    conda:
        "../../envs/pdbench.yaml"
    params:
        config=CONFIG_FILE,
        point_dir=point_dir,
    shell:
        "pdbench point-throughput --config {params.config} --point-dir {params.point_dir}"
        " --out {output.csv} > /dev/null 2> {log}"


rule experiment_throughput:
    input:
        csvs=get_point_csvs,
    output:
        csv=f"{RESULTS}/{{experiment}}/throughput.csv",
    log:
        f"{RESULTS}/{{experiment}}/logs/throughput.log",
    conda:
        "../../envs/pdbench.yaml"
    shell:
        "pdbench merge-csv {input.csvs} --out {output.csv} > /dev/null 2> {log}"
