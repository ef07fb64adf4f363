rule pretrain_vision:
    input:
        manifest=rules.prepare_data.output.manifest,
    output:
        # features.pt only when the encoder's output is cached; tower.json says where features come from
        **({"features": f"{RESULTS}/vision/features.pt"} if config["vision"]["cache"] else {}),
        summary=f"{RESULTS}/vision/tower.json",
    log:
        f"{RESULTS}/logs/pretrain_vision.log",
    benchmark:
        f"{RESULTS}/benchmarks/pretrain_vision.tsv"
    params:
        code=code_param("model.vision"),
        spec=vcfg.as_param(vcfg.vision_spec(config)),
    threads: 2
    resources:
        launch=single_task_resources,
    shell:
        "vlmscale pretrain-vision --spec {params.spec:q} --data-root {RESULTS}/data --out {RESULTS}/vision "
        "--executor {LAUNCH[executor]} --threads {threads} --results {RESULTS} --slurm {resources.launch:q} > {log} 2>&1"
