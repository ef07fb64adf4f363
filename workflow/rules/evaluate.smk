# One job per cell writes every benchmark's JSON: the model and features load once, not once per benchmark.
rule evaluate:
    input:
        manifest=rules.prepare_data.output.manifest,
        train=rules.train.output[0],
        vision=rules.pretrain_vision.output.summary,
    output:
        expand(
            f"{RESULTS}/cells/{{{{llm}}}}/{{{{compressor}}}}/v{{{{V}}}}/s{{{{seed}}}}/eval/{{benchmark}}.json",
            benchmark=BENCHMARKS,
        ),
    log:
        f"{RESULTS}/logs/evaluate/{{llm}}/{{compressor}}/v{{V}}/s{{seed}}.log",
    threads: LAUNCH["threads"]
    resources:
        launch=evaluation_resources,
        flags=LAUNCH_FLAGS,
    params:
        code=code_param("evaluation.evaluate"),
        spec=eval_spec,
        out_dir=lambda wildcards, output: os.path.dirname(output[0]),
        data_root=lambda wildcards, input: os.path.dirname(input.manifest),
    shell:
        "vlmscale evaluate --spec {params.spec:q} --data-root {params.data_root} --vision {input.vision} "
        "--train-json {input.train} --out-dir {params.out_dir} {resources.flags} --slurm {resources.launch:q} > {log} 2>&1"
