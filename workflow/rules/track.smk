rule track_sync:
    input:
        grid=rules.aggregate.output.parquet,
        report=rules.report.output.report,
        laws=expand(f"{RESULTS}/law/{{family}}.json", family=FAMILIES),
    output:
        f"{RESULTS}/mlflow_synced.json",
    log:
        f"{RESULTS}/logs/track_sync.log",
    params:
        spec=tracking_param(),
    shell:
        "vlmscale track-sync --spec {params.spec:q} --grid {input.grid} --results {RESULTS} "
        "--report-dir {RESULTS} --out {output} > {log} 2>&1"
