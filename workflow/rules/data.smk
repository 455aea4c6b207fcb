# Data stage (both worlds): OpenThoughts math prompts; DeepMath deduplicated against DAPO.
DATA_DIR = f"{RESULTS}/data"


rule sample_openthoughts:
    input:
        dataset_input("openthoughts"),
    output:
        sample=f"{DATA_DIR}/openthoughts_sample.parquet",
        stats=f"{DATA_DIR}/openthoughts_sample.stats.json",
    params:
        source=as_json(config["datasets"].get("openthoughts", {})),
        cfg=as_json({**config["data"]["openthoughts_sample"],
                     "on_bad_row": config["data"]["on_bad_row"]}),
    log:
        log_path("sample_openthoughts", "sample"),
    benchmark:
        bench_path("sample_openthoughts", "sample")
    threads: 1
    resources:
        **rule_resources("sample_openthoughts"),
    conda:
        "../../envs/cpu.yaml"
    shell:
        "python -m opd.stages.data.sample_openthoughts --source {params.source:q} --out {output.sample:q}"
        " --stats {output.stats:q} --params {params.cfg:q} > {log:q} 2>&1"


rule dedup_exact:
    input:
        dataset_input("dapo"),
        dataset_input("deepmath"),
    output:
        removed=f"{DATA_DIR}/deepmath_exact_removed.parquet",
        stats=f"{DATA_DIR}/deepmath_exact.stats.json",
    params:
        dapo=as_json(config["datasets"].get("dapo", {})),
        deepmath=as_json(config["datasets"].get("deepmath", {})),
        on_bad_row=config["data"]["on_bad_row"],
    log:
        log_path("dedup_exact", "exact"),
    benchmark:
        bench_path("dedup_exact", "exact")
    threads: 1
    resources:
        **rule_resources("dedup_exact"),
    conda:
        "../../envs/cpu.yaml"
    shell:
        "python -m opd.stages.data.dedup_exact --dapo {params.dapo:q} --deepmath {params.deepmath:q}"
        " --removed {output.removed:q} --stats {output.stats:q}"
        " --on-bad-row {params.on_bad_row:q} > {log:q} 2>&1"


# Separate from dedup_semantic so that changing only the threshold does not re-encode.
rule embed_dedup_texts:
    input:
        dataset_input("dapo"),
        dataset_input("deepmath"),
    output:
        dapo=f"{DATA_DIR}/embeddings/dapo.npy",
        deepmath=f"{DATA_DIR}/embeddings/deepmath.npy",
        meta=f"{DATA_DIR}/embeddings/meta.json",
    params:
        dapo=as_json(config["datasets"].get("dapo", {})),
        deepmath=as_json(config["datasets"].get("deepmath", {})),
        model=as_json(config["data"]["dedup"]["embedding_model"]),
        batch=config["data"]["dedup"]["batch_size"],
        on_bad_row=config["data"]["on_bad_row"],
    log:
        log_path("embed_dedup_texts", "embed"),
    benchmark:
        bench_path("embed_dedup_texts", "embed")
    threads: res("embed_dedup_texts", "threads")
    resources:
        **rule_resources("embed_dedup_texts"),
    conda:
        "../../envs/cpu.yaml"
    shell:
        "python -m opd.stages.data.embed_dedup_texts --dapo {params.dapo:q} --deepmath {params.deepmath:q}"
        " --model {params.model:q} --batch-size {params.batch:q} --out-dapo {output.dapo:q}"
        " --out-deepmath {output.deepmath:q} --meta {output.meta:q}"
        " --on-bad-row {params.on_bad_row:q} > {log:q} 2>&1"


rule dedup_semantic:
    input:
        exact=rules.dedup_exact.output.removed,
        emb=rules.embed_dedup_texts.output,
        planted=planted_input(),
    output:
        kept=f"{DATA_DIR}/deepmath_dedup.parquet",
        removed=f"{DATA_DIR}/deepmath_semantic_removed.parquet",
        stats=f"{DATA_DIR}/deepmath_dedup.stats.json",
    params:
        dapo=as_json(config["datasets"].get("dapo", {})),
        deepmath=as_json(config["datasets"].get("deepmath", {})),
        threshold=config["data"]["dedup"]["threshold"],
        planted=lambda w, input: f"--planted {shlex.quote(input.planted[0])}" if input.planted else "",
        on_bad_row=config["data"]["on_bad_row"],
    log:
        log_path("dedup_semantic", "semantic"),
    benchmark:
        bench_path("dedup_semantic", "semantic")
    threads: 1
    resources:
        **rule_resources("dedup_semantic"),
    conda:
        "../../envs/cpu.yaml"
    shell:
        "python -m opd.stages.data.dedup_semantic --dapo {params.dapo:q} --deepmath {params.deepmath:q}"
        " --exact-removed {input.exact:q} --emb-dapo {input.emb[0]:q}"
        " --emb-deepmath {input.emb[1]:q} --meta {input.emb[2]:q}"
        " --threshold {params.threshold:q} --kept {output.kept:q} --removed {output.removed:q}"
        " --stats {output.stats:q} {params.planted} --on-bad-row {params.on_bad_row:q}"
        " > {log:q} 2>&1"


rule dedup_table:
    input:
        rules.dedup_semantic.output.stats,
    output:
        csv=f"{RESULTS}/tables/dedup.csv",
        md=report(f"{RESULTS}/tables/dedup.md", caption="../report/dedup.rst", category="Data"),
    log:
        log_path("dedup_table", "table"),
    benchmark:
        bench_path("dedup_table", "table")
    threads: 1
    resources:
        **rule_resources("dedup_table"),
    conda:
        "../../envs/cpu.yaml"
    shell:
        "python -m opd.stages.data.dedup_table --stats {input:q} --csv {output.csv:q} --md {output.md:q}"
        " > {log:q} 2>&1"


rule prepare_dapo:
    """DAPO-Math-17k as a flat prompt set (the teacher-aligned prompts of the rescue recipe)."""
    input:
        dataset_input("dapo"),
    output:
        prompts=f"{DATA_DIR}/dapo_prompts.parquet",
        stats=f"{DATA_DIR}/dapo_prompts.stats.json",
    params:
        source=as_json(config["datasets"].get("dapo", {})),
        cfg=as_json({**config["data"]["dapo_prompts"], "on_bad_row": config["data"]["on_bad_row"]}),
    log:
        log_path("prepare_dapo", "dapo"),
    benchmark:
        bench_path("prepare_dapo", "dapo")
    threads: 1
    resources:
        **rule_resources("prepare_dapo"),
    conda:
        "../../envs/cpu.yaml"
    shell:
        "python -m opd.stages.data.prepare_dapo --source {params.source:q} --out {output.prompts:q}"
        " --stats {output.stats:q} --params {params.cfg:q} > {log:q} 2>&1"


rule select_prompts:
    """Teacher-aligned prompt selection (config `prompt_selection:`)."""
    input:
        teacher=lambda w: model_input(config["prompt_selection"][w.selection]["teacher"]),
        student=lambda w: selection_student_input(w.selection),
        prompts=lambda w: prompt_set_input(config["prompt_selection"][w.selection]["prompts"]),
    output:
        prompts=f"{DATA_DIR}/selected/{{selection}}.parquet",
        stats=f"{DATA_DIR}/selected/{{selection}}.stats.json",
    wildcard_constraints:
        selection="|".join(config["prompt_selection"]) or "__none__",
    params:
        teacher=lambda w: model_arg(config["prompt_selection"][w.selection]["teacher"]),
        student=lambda w: selection_student_arg(w.selection),
        prompts=lambda w: as_json(config["prompt_sets"][config["prompt_selection"][w.selection]["prompts"]]),
        cfg=lambda w: as_json(selection_params(w.selection)),
    log:
        log_path("select_prompts", "{selection}"),
    benchmark:
        bench_path("select_prompts", "{selection}")
    threads: res("select_prompts", "threads")
    resources:
        **rule_resources("select_prompts"),
    conda:
        "../../envs/vllm.yaml"
    shell:
        "python -m opd.stages.data.select_prompts --prompts {params.prompts:q} --teacher {params.teacher:q}"
        " {params.student} --out {output.prompts:q} --stats {output.stats:q}"
        " --params {params.cfg:q} --threads {threads} > {log:q} 2>&1"


rule fetch_released:
    """A file published with the paper (config `released:`), sha256-checked and flattened."""
    input:
        released_input,
    output:
        prompts=f"{RESULTS}/released/{{name}}.parquet",
        stats=f"{RESULTS}/released/{{name}}.stats.json",
    wildcard_constraints:
        name="|".join(config["released"]) or "__none__",
    params:
        cfg=lambda w: as_json(released_params(w.name)),
    log:
        log_path("fetch_released", "{name}"),
    benchmark:
        bench_path("fetch_released", "{name}")
    threads: 1
    resources:
        **rule_resources("fetch_released"),
    conda:
        "../../envs/cpu.yaml"
    shell:
        "python -m opd.stages.data.fetch_released --source {input:q} --out {output.prompts:q}"
        " --stats {output.stats:q} --params {params.cfg:q} > {log:q} 2>&1"
