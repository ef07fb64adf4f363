rule prepare_data:
    output:
        manifest=f"{RESULTS}/data/manifest.json",
    log:
        f"{RESULTS}/logs/prepare_data.log",
    params:
        spec=vcfg.as_param(vcfg.data_spec(config)),
    shell:
        "vlmscale prepare-data --spec {params.spec:q} --out {RESULTS}/data > {log} 2>&1"
