def flops_spec(wildcards):
    return vcfg.as_param({
        "architecture": vcfg.architecture_spec(config, wildcards.llm, int(wildcards.V)),
        "vision": vcfg.vision_spec(config),
        "text_tokens": config["flops"]["text_tokens"],
    })


rule flops:
    input:
        manifest=rules.prepare_data.output.manifest,
    output:
        f"{RESULTS}/cells/{{llm}}/v{{V}}/flops.json",
    log:
        f"{RESULTS}/logs/flops/{{llm}}/v{{V}}.log",
    params:
        code=code_param("analysis.flops"),
        spec=flops_spec,
    shell:
        "vlmscale flops --spec {params.spec:q} --manifest {input.manifest} --out {output} > {log} 2>&1"
