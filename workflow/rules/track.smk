rule track_sync:
    input:
        grid=rules.aggregate.output.parquet,
        report=rules.report.output.report,
        laws=LAWS,
    output:
        f"{RESULTS}/mlflow_synced.json",
    log:
        f"{RESULTS}/logs/track_sync.log",
    params:
        spec=tracking_param(),
        results=lambda wildcards, output: os.path.dirname(output[0]),
    shell:
        "vlmscale track-sync --spec {params.spec:q} --grid {input.grid} --results {params.results} "
        "--report-dir {params.results} --out {output} > {log} 2>&1"
