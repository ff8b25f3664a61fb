# Stage 0: the liveness sweep of a real run (pdbench.sweep). Planned read-only when
# the workflow is parsed; this job carries out that plan before any stage it concerns
# runs again: it stops steps of stale markers that still run, sets an unfinished
# measurement of gone servers aside under attempts/, and removes the stale markers.


rule sweep:
    output:
        record=str(RES.sweep_record("{run}")),
    log:
        str(RES.sweep_log("{run}")),
    localrule: True
    conda:
        "../../envs/pdbench.yaml"
    params:
        results=lambda wildcards, output: Path(output.record).parents[2],
        only=" ".join(shlex.quote(path) for path in sorted(STALE)),
    shell:
        "pdbench sweep --results {params.results} --only {params.only} --out {output.record}"
        " > /dev/null 2> {log}"
