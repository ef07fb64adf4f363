rule train:
    input:
        manifest=rules.prepare_data.output.manifest,
        vision=rules.pretrain_vision.output.summary,
    output:
        f"{RESULTS}/cells/{{llm}}/{{compressor}}/v{{V}}/s{{seed}}/train.json",
    log:
        f"{RESULTS}/logs/train/{{llm}}/{{compressor}}/v{{V}}/s{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/{{llm}}/{{compressor}}/v{{V}}/s{{seed}}.tsv"
    priority: training_priority
    threads: LAUNCH["threads"]
    resources:
        launch=launch_resources,
        ops=train_ops,
        tracking=TRACKING,
        flags=LAUNCH_FLAGS,
        # a resource, not a param: moving the checkpoints (to scratch) retrains nothing
        checkpoints=checkpoint_dir,
    params:
        code=code_param(identity.TRAINING_MODULE),
        spec=cell_spec,
        data_root=lambda wildcards, input: os.path.dirname(input.manifest),
    shell:
        "vlmscale train --spec {params.spec:q} --tracking {resources.tracking:q} --ops {resources.ops:q} "
        "--data-root {params.data_root} --vision {input.vision} --checkpoint-dir {resources.checkpoints} "
        "--out {output} {resources.flags} --slurm {resources.launch:q} > {log} 2>&1"
