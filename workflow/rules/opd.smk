# On-policy distillation (both worlds): pre-flight pair diagnosis and training, one job per
# experiment of the registry (config `experiments:`).


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
        final=directory(f"{OPD_DIR}/{{experiment}}/final"),
        metrics=f"{OPD_DIR}/{{experiment}}/metrics.jsonl",
        summary=f"{OPD_DIR}/{{experiment}}/summary.json",
    wildcard_constraints:
        experiment="|".join(experiments()) or "__none__",
    params:
        student=lambda w: model_arg(experiment(w)["student"]),
        teacher=lambda w: model_arg(experiment(w)["teacher"]),
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
        "{params.launch} -m opd.stages.opd.opd_train --student {params.student:q} --teacher {params.teacher:q}"
        " --prompts {params.prompts:q} --out {params.out:q} --params {params.cfg:q}"
        " --benchmarks {params.benchmarks:q} --threads {threads} > {log:q} 2>&1"
