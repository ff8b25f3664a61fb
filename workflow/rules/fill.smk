# Stage 4: fill the decode batch under slow_down while the client runs, then release.


rule fill:
    input:
        router=f"{RESULTS}/{{experiment}}/{{point}}/ready/router.json",
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
