# The tiny world (world: tiny): synthetic data in the real HF schemas, a BPE tokenizer and
# tiny Qwen3-architecture models, each checked on the tiny benchmarks.


rule build_tiny_world:
    output:
        expand(f"{TINY_WORLD_DIR}/{{name}}.parquet", name=TINY_WORLD_FILES),
        f"{TINY_WORLD_DIR}/heldout.json",
        f"{TINY_WORLD_DIR}/manifest.json",
    params:
        cfg=as_json(config["tiny_world"]),
        out=lambda w, output: os.path.dirname(output[0]),
    log:
        log_path("build_tiny_world", "world"),
    benchmark:
        bench_path("build_tiny_world", "world")
    threads: 1
    resources:
        **rule_resources("build_tiny_world"),
    conda:
        "../../envs/cpu.yaml"
    shell:
        "python -m opd.stages.tiny.build_tiny_world --out {params.out:q} --params {params.cfg:q}"
        " > {log:q} 2>&1"


rule build_tiny_tokenizer:
    input:
        rules.build_tiny_world.output,
    output:
        directory(f"{TINY_MODELS_DIR}/tokenizer"),
    params:
        cfg=as_json(config["tiny_models"]["tokenizer"]),
        world=lambda w, input: os.path.dirname(input[0]),
    log:
        log_path("build_tiny_tokenizer", "tokenizer"),
    benchmark:
        bench_path("build_tiny_tokenizer", "tokenizer")
    threads: 1
    resources:
        **rule_resources("build_tiny_tokenizer"),
    conda:
        "../../envs/cpu.yaml"
    shell:
        "python -m opd.stages.tiny.build_tiny_tokenizer --world {params.world:q} --out {output:q}"
        " --params {params.cfg:q} > {log:q} 2>&1"


rule build_tiny_models:
    input:
        world=f"{TINY_WORLD_DIR}/heldout.json",
        tokenizer=f"{TINY_MODELS_DIR}/tokenizer",
        init=tiny_model_init,
    output:
        directory(f"{TINY_MODELS_DIR}/{{model}}"),
    wildcard_constraints:
        model="|".join(tiny_models()) or "__none__",
    params:
        cfg=lambda w: as_json(tiny_recipe(w)),
        world=lambda w, input: os.path.dirname(input.world),
        init=lambda w, input: f"--init {shlex.quote(input.init[0])}" if input.init else "",
    log:
        log_path("build_tiny_models", "{model}"),
    benchmark:
        bench_path("build_tiny_models", "{model}")
    threads: lambda w: tiny_recipe(w)["threads"]   # the build computes on the recipe's count
    resources:
        **rule_resources("build_tiny_models"),
    conda:
        "../../envs/cpu.yaml"
    shell:
        "python -m opd.stages.tiny.build_tiny_models --world {params.world:q} --tokenizer {input.tokenizer:q}"
        " --out {output:q} --params {params.cfg:q} {params.init}"
        " > {log:q} 2>&1"


rule tiny_model_card:
    input:
        model=f"{TINY_MODELS_DIR}/{{model}}",
        world=rules.build_tiny_world.output,
    output:
        f"{TINY_MODELS_DIR}/{{model}}.card.json",
    wildcard_constraints:
        model="|".join(tiny_models()) or "__none__",
    params:
        cfg=as_json({**config["tiny_models"]["card"], "benchmarks": config["benchmarks"],
                     "seed": config["seed"]}),
        world=lambda w, input: os.path.dirname(input.world[0]),
    log:
        log_path("tiny_model_card", "{model}"),
    benchmark:
        bench_path("tiny_model_card", "{model}")
    threads: 1
    resources:
        **rule_resources("tiny_model_card"),
    conda:
        "../../envs/cpu.yaml"
    shell:
        "python -m opd.stages.tiny.tiny_model_card --model {input.model:q} --world {params.world:q}"
        " --out {output:q} --params {params.cfg:q} --threads {threads} > {log:q} 2>&1"


rule tiny_models_table:
    input:
        expand(f"{TINY_MODELS_DIR}/{{model}}.card.json", model=tiny_models()),
    output:
        md=report(f"{RESULTS}/tables/tiny_models.md", caption="../report/tiny_models.rst",
                  category="Tiny world"),
        csv=f"{RESULTS}/tables/tiny_models.csv",
        checks=f"{TINY_MODELS_DIR}/orderings.json",
    params:
        cfg=as_json(config["tiny_models"]["checks"]),
    log:
        log_path("tiny_models_table", "table"),
    benchmark:
        bench_path("tiny_models_table", "table")
    threads: 1
    resources:
        **rule_resources("tiny_models_table"),
    conda:
        "../../envs/cpu.yaml"
    shell:
        "python -m opd.stages.tiny.tiny_models_table --cards {input:q} --md {output.md:q}"
        " --csv {output.csv:q} --checks {output.checks:q} --params {params.cfg:q} > {log:q} 2>&1"
