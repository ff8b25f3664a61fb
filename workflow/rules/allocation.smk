# Stage 1: obtain (or adopt) the Slurm allocation of a grid point.


rule allocation:
    input:
        previous=get_allocation_predecessor,
    output:
        allocation=f"{RESULTS}/{{experiment}}/{{point}}/allocation.json",
    log:
        f"{RESULTS}/{{experiment}}/{{point}}/logs/allocation.log",
    localrule: True
    conda:
        "../../envs/pdbench.yaml"
    params:
        config=CONFIG_FILE,
        adopt=get_adopt_option,
    shell:
        "pdbench allocate --config {params.config} --experiment {wildcards.experiment}"
        " --point {wildcards.point} {params.adopt} --out {output.allocation} > /dev/null 2> {log}"
