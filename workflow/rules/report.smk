rule report:
    input:
        grid=rules.aggregate.output.parquet,
        laws=LAWS,
        frontier=rules.frontier.output[0],
    output:
        report=f"{RESULTS}/report.md",
        figures=report(
            expand(
                f"{RESULTS}/figures/{{family}}_{{compressor}}_q{{q}}.png",
                family=FAMILIES,
                compressor=COMPRESSORS,
                q=config["flops"]["text_tokens"],
            ),
            caption="../report/frontier.rst",
            category="Scaling law",
        ),
        residuals=report(
            expand(
                f"{RESULTS}/figures/{{family}}_{{compressor}}_residuals.png",
                family=FAMILIES,
                compressor=COMPRESSORS,
            ),
            caption="../report/residuals.rst",
            category="Fit diagnostics",
        ),
        compressors=report(
            expand(f"{RESULTS}/figures/{{family}}_compressors.png", family=FAMILIES),
            caption="../report/compressors.rst",
            category="Compressors",
        ),
        optimal_tokens=report(
            f"{RESULTS}/figures/optimal_tokens.png",
            caption="../report/optimal_tokens.rst",
            category="Scaling law",
        ),
    log:
        f"{RESULTS}/logs/report.log",
    params:
        code=code_param("analysis.report"),
        text_tokens=" ".join(str(q) for q in config["flops"]["text_tokens"]),
        out_dir=lambda wildcards, output: os.path.dirname(output.report),
    shell:
        "vlmscale report --grid {input.grid} --laws {input.laws} --frontier {input.frontier} "
        "--text-tokens {params.text_tokens} --out-dir {params.out_dir} > {log} 2>&1"
