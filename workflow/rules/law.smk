# One law per (family, compressor): the compressors' frontiers are compared, never mixed in one fit.
rule fit_law:
    input:
        grid=rules.aggregate.output.parquet,
    output:
        f"{RESULTS}/law/{{family}}/{{compressor}}.json",
    log:
        f"{RESULTS}/logs/fit_law/{{family}}/{{compressor}}.log",
    params:
        code=code_param("analysis.law", "analysis.tables"),
        form=config["law"]["form"],
        bootstrap=config["law"]["bootstrap"],
        seed=config["law"]["seed"],
        v_star_q=" ".join(str(q) for q in config["flops"]["text_tokens"]),
    shell:
        "vlmscale fit {input.grid} --family {wildcards.family} --compressor {wildcards.compressor} "
        "--form {params.form} --bootstrap {params.bootstrap} --seed {params.seed} "
        "--v-star-q {params.v_star_q} --out {output} > {log} 2>&1"


rule frontier:
    input:
        laws=LAWS,
    output:
        f"{RESULTS}/law/frontier.csv",
    log:
        f"{RESULTS}/logs/frontier.log",
    params:
        code=code_param("analysis.law"),
        text_tokens=" ".join(str(q) for q in config["flops"]["text_tokens"]),
        v_min=min(config["grid"]["visual_tokens"]),
        v_max=max(config["grid"]["visual_tokens"]),
    shell:
        "vlmscale frontier {input.laws} --text-tokens {params.text_tokens} --v-min {params.v_min} "
        "--v-max {params.v_max} --out {output} > {log} 2>&1"
