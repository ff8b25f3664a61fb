# Stage 1: obtain (or adopt) the Slurm allocation of a grid point.


rule allocation:
    input:
        preflight=ancient(str(EXP.preflight)),
        previous=get_allocation_predecessor,
    output:
        allocation=str(PT.allocation),
    log:
        str(PT.stage_log("allocation")),
    localrule: True
    conda:
        "../../envs/pdbench.yaml"
    params:
        config=CONFIG_FILE,
        point_dir=point_dir,
        adopt=get_adopt_option,
    shell:
        "pdbench allocate --config {params.config} --point-dir {params.point_dir}"
        " {params.adopt} > /dev/null 2> {log}"
