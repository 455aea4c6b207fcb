# On-policy distillation (both worlds): pre-flight pair diagnosis and training, one job per
# experiment of the registry (config `experiments:`).
OPD_DIR = f"{RESULTS}/opd"


rule diagnose_pair:
    input:
        student=lambda w: model_input(experiment(w)["student"]),
        teacher=lambda w: model_input(experiment(w)["teacher"]),
        prompts=lambda w: prompt_set_input(experiment(w)["prompts"]),
    output:
        f"{RESULTS}/diagnose/{{experiment}}.json",
    wildcard_constraints:
        experiment="|".join(experiments()) or "__none__",
    params:
        student=lambda w: model_location(experiment(w)["student"]),
        teacher=lambda w: model_location(experiment(w)["teacher"]),
        prompts=lambda w: as_json(config["prompt_sets"][experiment(w)["prompts"]]),
        cfg=lambda w: as_json(diagnose_params(w.experiment)),
    log:
        log_path("diagnose_pair", "{experiment}"),
    benchmark:
        bench_path("diagnose_pair", "{experiment}")
    threads: res("diagnose_pair", "threads")
    resources:
        **rule_resources("diagnose_pair"),
    conda:
        "../../envs/gpu.yaml"
    shell:
        "python -m opd.diagnose_pair --student {params.student:q} --teacher {params.teacher:q}"
        " --prompts {params.prompts:q} --out {output:q} --params {params.cfg:q}"
        " --threads {threads} > {log:q} 2>&1"


rule opd_train:
    input:
        student=lambda w: model_input(experiment(w)["student"]),
        teacher=lambda w: model_input(experiment(w)["teacher"]),
        prompts=lambda w: prompt_set_input(experiment(w)["prompts"]),
        benchmarks=benchmark_inputs(),
    output:
        final=directory(f"{OPD_DIR}/{{experiment}}/final"),
        metrics=f"{OPD_DIR}/{{experiment}}/metrics.jsonl",
        summary=f"{OPD_DIR}/{{experiment}}/summary.json",
    wildcard_constraints:
        experiment="|".join(experiments()) or "__none__",
    params:
        student=lambda w: model_location(experiment(w)["student"]),
        teacher=lambda w: model_location(experiment(w)["teacher"]),
        prompts=lambda w: as_json(config["prompt_sets"][experiment(w)["prompts"]]),
        cfg=lambda w: as_json(opd_params(w.experiment)),
        benchmarks=as_json(config["benchmarks"]),
        out=lambda w: f"{OPD_DIR}/{w.experiment}",
        launch=launcher("opd_train"),
    log:
        log_path("opd_train", "{experiment}"),
    benchmark:
        bench_path("opd_train", "{experiment}")
    threads: res("opd_train", "threads")
    resources:
        **rule_resources("opd_train"),
    # vLLM (the colocated generator, config opd.generator) brings its own CUDA torch
    conda:
        "../../envs/vllm.yaml"
    shell:
        "{params.launch} -m opd.opd_train --student {params.student:q} --teacher {params.teacher:q}"
        " --prompts {params.prompts:q} --out {params.out:q} --params {params.cfg:q}"
        " --benchmarks {params.benchmarks:q} --threads {threads} > {log:q} 2>&1"


rule opd_tables:
    """One CSV + Markdown table per experiment group and the claims summary."""
    input:
        metrics=[f"{OPD_DIR}/{e}/metrics.jsonl" for e in grouped_experiments()],
        evals=[s for e in grouped_experiments() for s in eval_summaries(e)]
        + [s for e in grouped_experiments() for s in eval_summaries(config["experiments"][e]["student"])],
    output:
        tables=[report(f"{RESULTS}/tables/{g}.md", caption="../report/opd_group.rst",
                       category="OPD experiments", subcategory="tables") for g in config["groups"]]
        + [f"{RESULTS}/tables/{g}.csv" for g in config["groups"]],
        summary=report(f"{RESULTS}/tables/README.md", caption="../report/claims.rst",
                       category="OPD experiments"),
    params:
        groups=as_json(config["groups"]),
        experiments=as_json(config["experiments"]),
    log:
        log_path("opd_tables", "tables"),
    benchmark:
        bench_path("opd_tables", "tables")
    threads: 1
    resources:
        **rule_resources("opd_tables"),
    conda:
        "../../envs/cpu.yaml"
    shell:
        "python -m opd.opd_tables --groups {params.groups:q} --experiments {params.experiments:q}"
        " --results {RESULTS:q} --out {RESULTS:q}/tables > {log:q} 2>&1"


rule opd_figures:
    """Training curves per group and per-position (long-horizon) curves."""
    input:
        metrics=[f"{OPD_DIR}/{e}/metrics.jsonl" for e in grouped_experiments()],
    output:
        groups=[report(f"{RESULTS}/figures/{g}.png", caption="../report/opd_figure.rst",
                       category="OPD experiments", subcategory="figures") for g in config["groups"]],
        positions=[report(f"{RESULTS}/figures/long_horizon_{e}.png",
                          caption="../report/long_horizon.rst", category="OPD experiments",
                          subcategory="long horizon") for e in per_position_experiments()],
    params:
        groups=as_json(config["groups"]),
        positions=per_position_experiments(),
    log:
        log_path("opd_figures", "figures"),
    benchmark:
        bench_path("opd_figures", "figures")
    threads: 1
    resources:
        **rule_resources("opd_figures"),
    conda:
        "../../envs/cpu.yaml"
    shell:
        "python -m opd.opd_figures --groups {params.groups:q} --results {RESULTS:q}"
        " --out {RESULTS:q}/figures --long-horizon {params.positions:q} > {log:q} 2>&1"
