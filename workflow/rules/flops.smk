rule flops:
    input:
        manifest=rules.prepare_data.output.manifest,
    output:
        f"{RESULTS}/cells/{{llm}}/{{compressor}}/v{{V}}/flops.json",
    log:
        f"{RESULTS}/logs/flops/{{llm}}/{{compressor}}/v{{V}}.log",
    params:
        code=code_param("analysis.flops"),
        spec=flops_spec,
    shell:
        "vlmscale flops --spec {params.spec:q} --manifest {input.manifest} --out {output} > {log} 2>&1"
