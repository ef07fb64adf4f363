def data_files(wildcards):
    # Real data: the conversation JSON is tracked, so replacing it re-checks the data (the image folder is
    # not: hashing every image on each invocation would cost more than it protects).
    return [config["data"]["train_json"]] if config["data"]["source"] == "llava" else []


rule prepare_data:
    input:
        data_files,
    output:
        manifest=f"{RESULTS}/data/manifest.json",
    log:
        f"{RESULTS}/logs/prepare_data.log",
    params:
        code=code_param("data.synthetic"),
        spec=vcfg.as_param(vcfg.data_spec(config)),
    shell:
        "vlmscale prepare-data --spec {params.spec:q} --out {RESULTS}/data > {log} 2>&1"
