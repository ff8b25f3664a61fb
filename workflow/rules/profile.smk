# Stage 5: torch-profiler snapshots of the decode server at full batch, and the
# benchmark client's result.


rule profile_snapshot:
    input:
        released=f"{RESULTS}/{{experiment}}/{{point}}/fill/released.json",
    output:
        snapshot=f"{RESULTS}/{{experiment}}/{{point}}/profile/{{snapshot}}/snapshot.json",
    log:
        f"{RESULTS}/{{experiment}}/{{point}}/logs/profile-{{snapshot}}.log",
    localrule: True
    conda:
        "../../envs/pdbench.yaml"
    params:
        config=CONFIG_FILE,
        point_dir=point_dir,
    shell:
        "pdbench snapshot --config {params.config} --point-dir {params.point_dir}"
        " --snapshot {wildcards.snapshot} --out {output.snapshot} 2> {log}"


rule bench_result:
    input:
        snapshots=get_snapshots,
    output:
        jsonl=f"{RESULTS}/{{experiment}}/{{point}}/bench/bench.jsonl",
    log:
        f"{RESULTS}/{{experiment}}/{{point}}/logs/bench-result.log",
    localrule: True
    conda:
        "../../envs/pdbench.yaml"
    params:
        config=CONFIG_FILE,
        point_dir=point_dir,
    shell:
        "pdbench bench-result --config {params.config} --point-dir {params.point_dir}"
        " --out {output.jsonl} 2> {log}"
