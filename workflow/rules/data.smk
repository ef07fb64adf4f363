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
        out_dir=lambda wildcards, output: os.path.dirname(output.manifest),
    shell:
        "vlmscale prepare-data --spec {params.spec:q} --out {params.out_dir} > {log} 2>&1"
