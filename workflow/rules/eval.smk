# Benchmark evaluation (both worlds): one job per model and benchmark; models are the registry
# entries listed in `evaluation.models` and every run's final student (`<experiment>/seed<s>`).


rule evaluate:
    input:
        model=lambda w: eval_model_input(w.model),
        benchmark=lambda w: [config["benchmarks"][w.benchmark]["path"]]
        if "path" in config["benchmarks"][w.benchmark] else [],
    output:
        samples=f"{RESULTS}/eval/{{model}}/{{benchmark}}.parquet",
        summary=f"{RESULTS}/eval/{{model}}/{{benchmark}}.json",
    wildcard_constraints:
        model="|".join(list(config["models"]) + runs()) or "__none__",
        benchmark="|".join(config["benchmarks"]) or "__none__",
    params:
        model=lambda w: eval_model_arg(w.model),
        benchmark=lambda w: as_json(config["benchmarks"][w.benchmark]),
        cfg=lambda w: as_json(eval_params()),
    log:
        log_path("evaluate", "{model}/{benchmark}"),
    benchmark:
        bench_path("evaluate", "{model}/{benchmark}")
    threads: res("evaluate", "threads")
    resources:
        **rule_resources("evaluate"),
    conda:
        "../../envs/vllm.yaml"
    shell:
        "python -m opd.stages.eval.evaluate --model {params.model:q} --benchmark {params.benchmark:q}"
        " --out {output.samples:q} --summary {output.summary:q} --params {params.cfg:q}"
        " --threads {threads} > {log:q} 2>&1"
