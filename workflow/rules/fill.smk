# Stage 4: fill the decode batch under slow_down while the client runs, then release.


# The client starts with the servers and imports while they load; the fill lets it go.
rule bench_client:
    input:
        plan=ancient(f"{RESULTS}/{{experiment}}/{{point}}/plan.json"),
    output:
        client=f"{RESULTS}/{{experiment}}/{{point}}/bench/client.json",
    log:
        f"{RESULTS}/{{experiment}}/{{point}}/logs/start-client.log",
    localrule: True
    conda:
        "../../envs/pdbench.yaml"
    params:
        config=CONFIG_FILE,
        point_dir=point_dir,
    shell:
        "pdbench start-client --config {params.config} --point-dir {params.point_dir}"
        " --out {output.client} > /dev/null 2> {log}"


rule fill:
    input:
        router=f"{RESULTS}/{{experiment}}/{{point}}/ready/router.json",
        client=f"{RESULTS}/{{experiment}}/{{point}}/bench/client.json",
    output:
        filled=f"{RESULTS}/{{experiment}}/{{point}}/fill/filled.json",
        curve=f"{RESULTS}/{{experiment}}/{{point}}/fill/curve.csv",
    log:
        f"{RESULTS}/{{experiment}}/{{point}}/logs/fill.log",
    localrule: True
    conda:
        "../../envs/pdbench.yaml"
    params:
        config=CONFIG_FILE,
        point_dir=point_dir,
    shell:
        "pdbench fill --config {params.config} --point-dir {params.point_dir}"
        " --out {output.filled} > /dev/null 2> {log}"


rule release:
    input:
        filled=f"{RESULTS}/{{experiment}}/{{point}}/fill/filled.json",
    output:
        released=f"{RESULTS}/{{experiment}}/{{point}}/fill/released.json",
    log:
        f"{RESULTS}/{{experiment}}/{{point}}/logs/release.log",
    localrule: True
    conda:
        "../../envs/pdbench.yaml"
    params:
        config=CONFIG_FILE,
        point_dir=point_dir,
    shell:
        "pdbench release --config {params.config} --point-dir {params.point_dir}"
        " --out {output.released} > /dev/null 2> {log}"
