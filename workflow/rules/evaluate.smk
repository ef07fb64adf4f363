def eval_spec(wildcards):
    return vcfg.as_param({
        "model": vcfg.cell_spec(config, wildcards.llm, int(wildcards.V), int(wildcards.seed)),
        "benchmarks": [vcfg.benchmark_spec(config, b) for b in BENCHMARKS],
        "max_new_tokens": config["evaluation"]["max_new_tokens"],
        "max_new_tokens_cap": config["evaluation"]["max_new_tokens_cap"],
        "dtype": config["evaluation"]["dtype"],
    })


def evaluation_resources(wildcards):
    # Its own request (evaluation.resources), not the LLM's training one; a resource, not a param.
    return vcfg.as_param(vcfg.evaluation_resources(config, wildcards.llm))


# One job per cell writes every benchmark's JSON: the model and features load once, not once per benchmark.
rule evaluate:
    input:
        train=rules.train.output[0],
        vision=rules.pretrain_vision.output.summary,
    output:
        expand(f"{RESULTS}/cells/{{{{llm}}}}/v{{{{V}}}}/s{{{{seed}}}}/eval/{{benchmark}}.json", benchmark=BENCHMARKS),
    log:
        f"{RESULTS}/logs/evaluate/{{llm}}/v{{V}}/s{{seed}}.log",
    params:
        code=code_param("evaluation.evaluate"),
        spec=eval_spec,
        out_dir=f"{RESULTS}/cells/{{llm}}/v{{V}}/s{{seed}}/eval",
    threads: LAUNCH["threads"]
    resources:
        launch=evaluation_resources,
    shell:
        "vlmscale evaluate --spec {params.spec:q} --data-root {RESULTS}/data --vision {input.vision} "
        "--train-json {input.train} --out-dir {params.out_dir} {LAUNCH_FLAGS} --slurm {resources.launch:q} > {log} 2>&1"
