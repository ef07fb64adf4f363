rule train:
    input:
        manifest=rules.prepare_data.output.manifest,
        vision=rules.pretrain_vision.output.summary,
    output:
        f"{RESULTS}/cells/{{llm}}/v{{V}}/s{{seed}}/train.json",
    log:
        f"{RESULTS}/logs/train/{{llm}}/v{{V}}/s{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/{{llm}}/v{{V}}/s{{seed}}.tsv"
    params:
        code=code_param(identity.TRAINING_MODULE),
        spec=cell_spec,
    threads: LAUNCH["threads"]
    resources:
        launch=launch_resources,
        ops=train_ops,
    priority: training_priority
    shell:
        "vlmscale train --spec {params.spec:q} --tracking {TRACKING:q} --ops {resources.ops:q} --data-root {RESULTS}/data "
        "--vision {input.vision} --checkpoint-dir {CHECKPOINTS}/{wildcards.llm}/v{wildcards.V}/s{wildcards.seed} --out {output} "
        "{LAUNCH_FLAGS} --slurm {resources.launch:q} > {log} 2>&1"
