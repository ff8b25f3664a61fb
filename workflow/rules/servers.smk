# Stage 3: launch prefill groups, the decode server and the router into the allocation,
# and wait until each is ready. Markers are ephemeral: they describe live processes.


rule prefill_server:
    input:
        plan=ancient(f"{RESULTS}/{{experiment}}/{{point}}/plan.json"),
    output:
        ready=f"{RESULTS}/{{experiment}}/{{point}}/ready/prefill-{{group}}.json",
    log:
        f"{RESULTS}/{{experiment}}/{{point}}/logs/launch-prefill-{{group}}.log",
    localrule: True
    conda:
        "../../envs/pdbench.yaml"
    params:
        config=CONFIG_FILE,
        point_dir=point_dir,
    shell:
        "pdbench launch --config {params.config} --point-dir {params.point_dir}"
        " --server prefill-{wildcards.group} --out {output.ready} > /dev/null 2> {log}"


rule decode_server:
    input:
        plan=ancient(f"{RESULTS}/{{experiment}}/{{point}}/plan.json"),
    output:
        ready=f"{RESULTS}/{{experiment}}/{{point}}/ready/decode.json",
    log:
        f"{RESULTS}/{{experiment}}/{{point}}/logs/launch-decode.log",
    localrule: True
    conda:
        "../../envs/pdbench.yaml"
    params:
        config=CONFIG_FILE,
        point_dir=point_dir,
    shell:
        "pdbench launch --config {params.config} --point-dir {params.point_dir}"
        " --server decode --out {output.ready} > /dev/null 2> {log}"


rule router:
    input:
        prefill=get_prefill_ready,
        decode=f"{RESULTS}/{{experiment}}/{{point}}/ready/decode.json",
    output:
        ready=f"{RESULTS}/{{experiment}}/{{point}}/ready/router.json",
    log:
        f"{RESULTS}/{{experiment}}/{{point}}/logs/launch-router.log",
    localrule: True
    conda:
        "../../envs/pdbench.yaml"
    params:
        config=CONFIG_FILE,
        point_dir=point_dir,
    shell:
        "pdbench launch --config {params.config} --point-dir {params.point_dir}"
        " --server router --out {output.ready} > /dev/null 2> {log}"
