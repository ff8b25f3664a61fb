# Stage 7: each point's provenance (pdbench.provenance): what ran, where, with which
# versions, when, at what cost in GPU-hours, and the hash of every raw input. Read from
# the stored records and Slurm accounting; runs where Snakemake runs.


rule point_manifest:
    input:
        csv=str(PT.throughput),
        teardown=str(PT.teardown),
    output:
        manifest=report(
            str(PT.manifest),
            caption="../report/manifest.rst",
            category="Provenance",
            subcategory="{experiment}",
            labels={"point": "{point}"},
        ),
    log:
        str(PT.stage_log("manifest")),
    localrule: True
    conda:
        "../../envs/pdbench.yaml"
    params:
        config=CONFIG_FILE,
        point_dir=point_dir,
        repository=workflow.basedir,
    shell:
        "pdbench manifest --config {params.config} --point-dir {params.point_dir}"
        " --repository {params.repository} > /dev/null 2> {log}"
