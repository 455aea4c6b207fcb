# Off-policy cold start (both worlds): sharded teacher rollouts -> filters -> SFT of the base
# student. Rollout sets and cold starts are named in config (`rollouts:`, `cold_start:`).
ROLLOUTS_DIR = f"{RESULTS}/rollouts"
SFT_DIR = f"{RESULTS}/sft"


rule teacher_rollouts:
    input:
        teacher=lambda w: model_input(rollouts_spec(w.rollouts)["teacher"]),
        prompts=lambda w: prompt_set_input(rollouts_spec(w.rollouts)["prompts"]),
    output:
        f"{ROLLOUTS_DIR}/{{rollouts}}/shard-{{shard}}-of-{{shards}}.parquet",
    wildcard_constraints:
        rollouts="|".join(config["rollouts"]) or "__none__",
        shard=r"\d+",
        shards=r"\d+",
    params:
        teacher=lambda w: model_arg(rollouts_spec(w.rollouts)["teacher"]),
        prompts=lambda w: as_json(config["prompt_sets"][rollouts_spec(w.rollouts)["prompts"]]),
        cfg=lambda w: as_json(rollouts_params(w.rollouts)),
    log:
        log_path("teacher_rollouts", "{rollouts}/shard-{shard}-of-{shards}"),
    benchmark:
        bench_path("teacher_rollouts", "{rollouts}/shard-{shard}-of-{shards}")
    threads: res("teacher_rollouts", "threads")
    resources:
        **rule_resources("teacher_rollouts"),
    conda:
        "../../envs/vllm.yaml"
    shell:
        "python -m opd.stages.rollouts.teacher_rollouts --model {params.teacher:q} --prompts {params.prompts:q}"
        " --shard {wildcards.shard} --num-shards {wildcards.shards} --out {output:q}"
        " --params {params.cfg:q} --threads {threads} > {log:q} 2>&1"


rule filter_rollouts:
    input:
        shards=lambda w: rollout_shards(w.rollouts),
    output:
        sft=f"{ROLLOUTS_DIR}/{{rollouts}}/sft.parquet",
        stats=f"{ROLLOUTS_DIR}/{{rollouts}}/filter_stats.json",
    wildcard_constraints:
        rollouts="|".join(config["rollouts"]) or "__none__",
    params:
        cfg=lambda w: as_json({"template": rollouts_params(w.rollouts)["template"],
                               "keep_per_prompt": rollouts_spec(w.rollouts)["keep_per_prompt"],
                               "filters": config["filters"]}),
    log:
        log_path("filter_rollouts", "{rollouts}"),
    benchmark:
        bench_path("filter_rollouts", "{rollouts}")
    threads: 1
    resources:
        **rule_resources("filter_rollouts"),
    conda:
        "../../envs/cpu.yaml"
    shell:
        "python -m opd.stages.rollouts.filter_rollouts --shards {input.shards:q} --out {output.sft:q}"
        " --stats {output.stats:q} --params {params.cfg:q} > {log:q} 2>&1"


rule cold_start_sft:
    input:
        student=lambda w: model_input(config["cold_start"][w.name]["student"]),
        data=lambda w: cold_start_data(w.name),
    output:
        final=directory(f"{SFT_DIR}/{{name}}/final"),
        log=f"{SFT_DIR}/{{name}}/train_log.jsonl",
        summary=f"{SFT_DIR}/{{name}}/summary.json",
    wildcard_constraints:
        name="|".join(config["cold_start"]) or "__none__",
    params:
        student=lambda w: model_arg(config["cold_start"][w.name]["student"]),
        cfg=lambda w: as_json(cold_start_params(w.name)),
        out=lambda w: f"{SFT_DIR}/{w.name}",
        launch=lambda w: launcher("cold_start_sft", config["cold_start"][w.name]["accelerate_config"]),
    log:
        log_path("cold_start_sft", "{name}"),
    benchmark:
        bench_path("cold_start_sft", "{name}")
    threads: res("cold_start_sft", "threads")
    resources:
        **rule_resources("cold_start_sft"),
    conda:
        "../../envs/gpu.yaml"
    shell:
        "{params.launch} -m opd.stages.rollouts.cold_start_sft --model {params.student:q} --data {input.data:q}"
        " --out {params.out:q} --params {params.cfg:q} --threads {threads} > {log:q} 2>&1"


rule cold_start_check:
    """Tiny world: did the SFT student adopt the teacher's thinking pattern and gain accuracy?"""
    input:
        base=lambda w: eval_summaries(config["cold_start"][w.name]["student"]),
        sft=lambda w: eval_summaries(w.name),
    output:
        f"{SFT_DIR}/{{name}}/check.json",
    wildcard_constraints:
        name="|".join(config["cold_start"]) or "__none__",
    params:
        pattern=lambda w: config["tiny_models"]["models"][
            rollouts_spec(config["cold_start"][w.name]["rollouts"])["teacher"]]["pattern"],
    log:
        log_path("cold_start_check", "{name}"),
    benchmark:
        bench_path("cold_start_check", "{name}")
    threads: 1
    resources:
        **rule_resources("cold_start_check"),
    conda:
        "../../envs/cpu.yaml"
    shell:
        "python -m opd.stages.rollouts.cold_start_check --base {input.base:q} --sft {input.sft:q}"
        " --pattern {params.pattern:q} --out {output:q} > {log:q} 2>&1"
