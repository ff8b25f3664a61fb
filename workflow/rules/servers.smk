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
    shell:
        "pdbench launch --config {params.config} --plan {input.plan}"
        " --server prefill-{wildcards.group} --out {output.ready} 2> {log}"


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
    shell:
        "pdbench launch --config {params.config} --plan {input.plan}"
        " --server decode --out {output.ready} 2> {log}"


rule router:
    input:
        plan=ancient(f"{RESULTS}/{{experiment}}/{{point}}/plan.json"),
        prefill=lambda wc: [ancient(f) for f in get_prefill_ready(wc)],
        decode=ancient(f"{RESULTS}/{{experiment}}/{{point}}/ready/decode.json"),
    output:
        ready=f"{RESULTS}/{{experiment}}/{{point}}/ready/router.json",
    log:
        f"{RESULTS}/{{experiment}}/{{point}}/logs/launch-router.log",
    localrule: True
    conda:
        "../../envs/pdbench.yaml"
    params:
        config=CONFIG_FILE,
    shell:
        "pdbench launch --config {params.config} --plan {input.plan}"
        " --server router --out {output.ready} 2> {log}"
