rule aggregate:
    input:
        train=expand(f"{RESULTS}/cells/{{cell}}/train.json", cell=CELLS),
        flops=expand(f"{RESULTS}/cells/{{cell}}/flops.json", cell=ARCHITECTURES),
        evals=expand(
            f"{RESULTS}/cells/{{cell}}/eval/{{benchmark}}.json",
            cell=CELLS,
            benchmark=BENCHMARKS,
        ),
    output:
        parquet=f"{RESULTS}/grid.parquet",
        database=f"{RESULTS}/grid.duckdb",
    log:
        f"{RESULTS}/logs/aggregate.log",
    params:
        code=code_param("analysis.aggregate"),
        spec=vcfg.as_param({"cells": CELLS, "benchmarks": BENCHMARKS}),
        results=lambda wildcards, output: os.path.dirname(output.parquet),
    shell:
        "vlmscale aggregate --spec {params.spec:q} --results {params.results} --parquet {output.parquet} "
        "--database {output.database} > {log} 2>&1"
