# Stage 1: obtain (or adopt) the Slurm allocation of a grid point.


rule allocation:
    output:
        allocation=f"{RESULTS}/{{experiment}}/{{point}}/allocation.json",
    log:
        f"{RESULTS}/{{experiment}}/{{point}}/logs/allocation.log",
    localrule: True
    conda:
        "../../envs/pdbench.yaml"
    params:
        config=CONFIG_FILE,
    shell:
        "pdbench allocate --config {params.config} --experiment {wildcards.experiment}"
        " --point {wildcards.point} --out {output.allocation} 2> {log}"
