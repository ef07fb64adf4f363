rule pretrain_vision:
    input:
        manifest=rules.prepare_data.output.manifest,
    output:
        # features.pt only when the encoder's output is cached; tower.json says where features come from
        **(
            {"features": f"{RESULTS}/vision/features.pt"}
            if config["vision"]["cache"]
            else {}
        ),
        summary=f"{RESULTS}/vision/tower.json",
    log:
        f"{RESULTS}/logs/pretrain_vision.log",
    benchmark:
        f"{RESULTS}/benchmarks/pretrain_vision.tsv"
    threads: 1 if config["vision"]["source"] == "tiny" else 2  # the tiny tower: one thread, any machine's bits
    resources:
        launch=single_task_resources,
        executor=LAUNCH["executor"],
        results=RESULTS,
    params:
        code=code_param("model.vision"),
        spec=vcfg.as_param(vcfg.vision_spec(config)),
        data_root=lambda wildcards, input: os.path.dirname(input.manifest),
        out_dir=lambda wildcards, output: os.path.dirname(output.summary),
    shell:
        "vlmscale pretrain-vision --spec {params.spec:q} --data-root {params.data_root} --out {params.out_dir} "
        "--executor {resources.executor} --threads {threads} --results {resources.results} "
        "--slurm {resources.launch:q} > {log} 2>&1"
