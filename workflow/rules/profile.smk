# Stage 5: torch-profiler snapshots of the decode server at full batch (one after the
# other), the benchmark client's result, and the point's teardown.


rule profile_snapshot:
    input:
        released=f"{RESULTS}/{{experiment}}/{{point}}/fill/released.json",
        previous=get_previous_snapshot,
        decode=ancient(f"{RESULTS}/{{experiment}}/{{point}}/ready/decode.json"),
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
        " --snapshot {wildcards.snapshot} --out {output.snapshot} > /dev/null 2> {log}"


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
        " --out {output.jsonl} > /dev/null 2> {log}"


rule teardown:
    input:
        snapshots=get_snapshots,
        bench=f"{RESULTS}/{{experiment}}/{{point}}/bench/bench.jsonl",
    output:
        teardown=f"{RESULTS}/{{experiment}}/{{point}}/teardown.json",
    log:
        f"{RESULTS}/{{experiment}}/{{point}}/logs/teardown.log",
    localrule: True
    conda:
        "../../envs/pdbench.yaml"
    params:
        config=CONFIG_FILE,
        point_dir=point_dir,
    shell:
        "pdbench teardown --config {params.config} --point-dir {params.point_dir}"
        " --out {output.teardown} > /dev/null 2> {log}"
