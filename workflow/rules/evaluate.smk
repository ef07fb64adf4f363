def eval_spec(wildcards):
    return vcfg.as_param({
        "cell": vcfg.cell_spec(config, wildcards.llm, int(wildcards.V)),
        "benchmark": vcfg.benchmark_spec(config, wildcards.benchmark),
    })


rule evaluate:
    input:
        train=rules.train.output[0],
        features=rules.pretrain_vision.output.features,
        code=[f"{SRC}/evaluate.py", f"{SRC}/data.py"],
    output:
        f"{RESULTS}/cells/{{llm}}/v{{V}}/eval/{{benchmark}}.json",
    log:
        f"{RESULTS}/logs/evaluate/{{llm}}/v{{V}}/{{benchmark}}.log",
    params:
        spec=eval_spec,
    threads: LAUNCH["threads"]
    shell:
        "vlmscale evaluate --spec {params.spec:q} --data-root {RESULTS}/data --features {input.features} "
        "--train-json {input.train} --out {output} {launch_flags()} > {log} 2>&1"
