# Benchmark evaluation (both worlds): one job per model, every benchmark in one pass of the
# loaded model; models are the registry entries listed in `evaluation.models` and every run's
# final student (`<experiment>/seed<s>`).


rule evaluate:
    input:
        model=lambda w: eval_model_input(w.model),
        benchmarks=lambda w: [b["path"] for b in config["benchmarks"].values() if "path" in b],
    output:
        samples=[f"{RESULTS}/eval/{{model}}/{b}.parquet" for b in config["benchmarks"]],
        summaries=[f"{RESULTS}/eval/{{model}}/{b}.json" for b in config["benchmarks"]],
    wildcard_constraints:
        model="|".join(list(config["models"]) + runs()) or "__none__",
    params:
        model=lambda w: eval_model_arg(w.model),
        benchmarks=lambda w: as_json(config["benchmarks"]),
        out_dir=lambda w: f"{RESULTS}/eval/{w.model}",
        cfg=lambda w: as_json(eval_params()),
    log:
        log_path("evaluate", "{model}"),
    benchmark:
        bench_path("evaluate", "{model}")
    threads: res("evaluate", "threads")
    resources:
        **rule_resources("evaluate"),
    conda:
        "../../envs/vllm.yaml"
    shell:
        "python -m opd.stages.eval.evaluate --model {params.model:q}"
        " --benchmarks {params.benchmarks:q} --out-dir {params.out_dir:q}"
        " --params {params.cfg:q} --threads {threads} > {log:q} 2>&1"
