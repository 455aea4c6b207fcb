# On-policy distillation (both worlds): pre-flight pair diagnosis, one job per pair, and
# training, one job per experiment of the registry (config `experiments:`) and seed (`seeds:`).


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
        student=lambda w: model_arg(experiment(w)["student"]),
        teacher=lambda w: model_arg(experiment(w)["teacher"]),
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
        "python -m opd.stages.opd.diagnose_pair --student {params.student:q} --teacher {params.teacher:q}"
        " --prompts {params.prompts:q} --out {output:q} --params {params.cfg:q}"
        " --threads {threads} > {log:q} 2>&1"


rule opd_train:
    input:
        student=lambda w: model_input(experiment(w)["student"]),
        teacher=lambda w: model_input(experiment(w)["teacher"]),
        prompts=lambda w: prompt_set_input(experiment(w)["prompts"]),
        benchmarks=benchmark_inputs(),
    output:
        final=directory(f"{OPD_DIR}/{{experiment}}/seed{{seed}}/final"),
        metrics=f"{OPD_DIR}/{{experiment}}/seed{{seed}}/metrics.jsonl",
        summary=f"{OPD_DIR}/{{experiment}}/seed{{seed}}/summary.json",
    wildcard_constraints:
        experiment="|".join(experiments()) or "__none__",
        seed="|".join(str(s) for s in seeds()),
    params:
        student=lambda w: model_arg(experiment(w)["student"]),
        teacher=lambda w: model_arg(experiment(w)["teacher"]),
        prompts=lambda w: as_json(config["prompt_sets"][experiment(w)["prompts"]]),
        cfg=lambda w: as_json(opd_params(w.experiment, w.seed)),
        benchmarks=as_json(config["benchmarks"]),
        out=lambda w: run_dir(run_name(w.experiment, w.seed)),
        launch=launcher("opd_train"),
    log:
        log_path("opd_train", "{experiment}/seed{seed}"),
    benchmark:
        bench_path("opd_train", "{experiment}/seed{seed}")
    threads: res("opd_train", "threads")
    resources:
        **rule_resources("opd_train"),
    # vLLM (the colocated generator, config opd.generator) brings its own CUDA torch
    conda:
        "../../envs/vllm.yaml"
    shell:
        "{params.launch} -m opd.stages.opd.opd_train --student {params.student:q} --teacher {params.teacher:q}"
        " --prompts {params.prompts:q} --out {params.out:q} --params {params.cfg:q}"
        " --benchmarks {params.benchmarks:q} --threads {threads} > {log:q} 2>&1"
