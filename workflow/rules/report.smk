rule report:
    input:
        grid=rules.aggregate.output.parquet,
        laws=expand(f"{RESULTS}/law/{{family}}.json", family=FAMILIES),
        frontier=rules.frontier.output[0],
    output:
        report=f"{RESULTS}/report.md",
        figures=report(
            expand(
                f"{RESULTS}/figures/{{family}}_q{{q}}.png",
                family=FAMILIES,
                q=config["flops"]["text_tokens"],
            ),
            caption="../report/frontier.rst",
            category="Scaling law",
        ),
        residuals=report(
            expand(f"{RESULTS}/figures/{{family}}_residuals.png", family=FAMILIES),
            caption="../report/residuals.rst",
            category="Fit diagnostics",
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
