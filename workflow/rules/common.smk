# Shared helpers: config validation (before any job runs), resources, logs, environment.
import json
import os
import shlex
import sys

from opd.core.config import ConfigError, validate
from opd.core.plan import PlanError, check as check_memory_plan

try:
    validate(config)
    # every GPU job's peak memory per GPU, estimated from the models' shapes; a job that
    # cannot fit stops the workflow (dry run included) before anything is submitted
    MEMORY_PLAN = check_memory_plan(config)
except (ConfigError, PlanError) as err:
    raise WorkflowError(str(err)) from None
if MEMORY_PLAN and workflow.is_main_process:  # not again inside each job
    print("GPU memory plan (per GPU):\n  " + "\n  ".join(e.line() for e in MEMORY_PLAN),
          file=sys.stderr)

RESULTS = "results"
TINY_WORLD_DIR = f"{RESULTS}/world/tiny"
TINY_MODELS_DIR = f"{RESULTS}/models/tiny"
OPD_DIR = f"{RESULTS}/opd"
TINY_WORLD_FILES = [
    "openthoughts", "dapo", "deepmath", "deepmath_planted", "probe", "aime24", "aime25", "amc23",
]

# Every job: offline hub, optional HF_HOME. Exported here so `shell:` inherits it.
if config["offline"]:
    os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
if config["hf_home"]:
    os.environ.update(HF_HOME=config["hf_home"])
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Jobs import the opd package from this checkout, also inside conda envs (--sdm conda).
_src = os.path.join(workflow.basedir, "src")
os.environ.update(PYTHONPATH=os.pathsep.join(
    [_src] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != _src]))


def as_json(obj):
    """A config section as JSON, for `--params {params.cfg:q}` (shell-quoted by Snakemake)."""
    return json.dumps(obj, sort_keys=True)


def res(rule_name, key):
    """A resource for a rule: its own entry in config.resources.rules, else the default."""
    own = config["resources"]["rules"].get(rule_name, {})
    return own.get(key, config["resources"]["default"].get(key))


SCHEDULER_KEYS = ("mem_mb", "runtime", "gpu", "gpu_model", "cpus_per_gpu", "slurm_partition",
                  "slurm_account")


def rule_resources(rule_name):
    """Scheduler resources of a rule from config (its own entry over the default), for
    `resources: **rule_resources(...)`. Unset keys are left out, so slurm gets no empty flags;
    CPU rules carry gpu=0 and no GPU request."""
    own = config["resources"]["rules"].get(rule_name, {})
    merged = {**config["resources"]["default"], **own}
    return {k: merged[k] for k in SCHEDULER_KEYS if merged.get(k) not in (None, "")}


def log_path(rule_name, stem="{wildcards}"):
    return f"{RESULTS}/logs/{rule_name}/{stem}.log"


def bench_path(rule_name, stem="{wildcards}"):
    return f"{RESULTS}/logs/{rule_name}/{stem}.benchmark.tsv"


def tiny_models():
    return list(config["tiny_models"]["models"])


def tiny_model_init(wildcards):
    init = config["tiny_models"]["models"][wildcards.model]["init"]
    return [f"{TINY_MODELS_DIR}/{init}"] if init else []


def tiny_recipe(wildcards):
    recipe = dict(config["tiny_models"]["models"][wildcards.model])
    recipe["arch"] = config["tiny_models"]["archs"][recipe["arch"]]
    return recipe


def dataset_input(name):
    """The local file of a dataset (so Snakemake can build or track it); none for hub ids."""
    spec = config["datasets"].get(name)
    if spec is None:
        raise WorkflowError(f"config datasets.{name} is required by this workflow")
    return [spec["path"]] if "path" in spec else []


def released_input(wildcards):
    """A released file: its URL through Snakemake's HTTP storage (downloaded by the job), or,
    with offline: true, the copy in released_cache named after the entry and the URL's suffix."""
    url = config["released"][wildcards.name]["url"]
    if config["offline"]:
        suffix = os.path.splitext(url.rsplit("/", 1)[-1])[1]
        return os.path.join(config["released_cache"], wildcards.name + suffix)
    return storage.http(url)


def released_params(name):
    spec = dict(config["released"][name])
    template = spec["strip_template"]
    spec["strip_template"] = None if template is None else config["templates"][template]
    return spec


def planted_input():
    """The tiny world's planted-duplicate ground truth, scored by the dedup stage."""
    return [f"{TINY_WORLD_DIR}/deepmath_planted.parquet"] if config["world"] == "tiny" else []


def experiments():
    return list(config["experiments"])


def experiment(wildcards):
    return config["experiments"][wildcards.experiment]


def seeds():
    return list(config["seeds"])


def run_name(name, seed):
    """One OPD run: an experiment trained with one seed of `seeds`."""
    return f"{name}/seed{seed}"


def runs(names=None):
    return [run_name(e, s) for e in (experiments() if names is None else names) for s in seeds()]


def run_dir(run):
    return f"{OPD_DIR}/{run}"


def model_arg(name):
    """A model of the registry as the stages take it: JSON with its local ``path``, or its
    ``hub_id`` and ``revision`` pin, its thinking mode and its name (for messages)."""
    spec = config["models"][name]
    if "path" in spec:
        return json.dumps({"name": name, "path": spec["path"], "thinking": spec["thinking"]})
    return json.dumps({"name": name, "hub_id": spec["hub_id"], "revision": spec["revision"],
                       "thinking": spec["thinking"]})


_WARNED = set()


def model_input(name):
    """A local model directory as an input (so the workflow builds it first); none for hub ids.

    A directory outside results/ that does not exist yet (e.g. a checkpoint still to be copied
    to the cluster) is not an input, so the DAG can be listed; its jobs fail when they load it.
    """
    spec = config["models"][name]
    if "path" not in spec:
        return []
    path = spec["path"]
    if path.startswith(f"{RESULTS}/") or os.path.exists(path):
        return [path]
    if name not in _WARNED:
        _WARNED.add(name)
        print(f"warning: models.{name}.path {path!r} does not exist; jobs that use it will fail",
              file=sys.stderr)
    return []


def prompt_set_input(name):
    return [config["prompt_sets"][name]["path"]]


def benchmark_inputs():
    return [b["path"] for b in config["benchmarks"].values() if "path" in b]


def opd_params(name, seed):
    """An experiment's resolved OPD settings for one seed: defaults, then its own overrides."""
    exp = config["experiments"][name]
    cfg = {**config["opd"], **exp["opd"], "steps": exp["steps"], "seed": int(seed),
           "template": config["templates"][exp["template"]]}
    validation = cfg["validation"]
    cfg["validation"] = {**validation, "template": config["templates"][validation["template"]]}
    return cfg


def diagnose_params(name):
    """The pre-flight diagnosis of a pair, with the first seed (it runs once per pair)."""
    cfg = opd_params(name, seeds()[0])
    return {**config["diagnose"], "seed": cfg["seed"], "template": cfg["template"],
            "max_response_tokens": cfg["max_response_tokens"], "temperature": cfg["temperature"],
            "teacher_temperature": cfg["teacher_temperature"], "top_k": cfg["top_k"],
            "chunk_size": cfg["chunk_size"],
            "max_tokens_per_micro_batch": cfg["max_tokens_per_micro_batch"]}


def diagnosed_experiments():
    """One experiment per distinct (student, teacher, prompts, template): the pre-flight
    diagnosis does not depend on the OPD objective, so variants of a pair share it."""
    seen, out = set(), []
    for name in experiments():
        exp = config["experiments"][name]
        key = (exp["student"], exp["teacher"], exp["prompts"], exp["template"])
        if key not in seen:
            seen.add(key)
            out.append(name)
    return out


def all_targets():
    targets = [
        f"{RESULTS}/data/openthoughts_sample.parquet",
        f"{RESULTS}/tables/dedup.md",
        f"{RESULTS}/tables/dedup.csv",
    ]
    targets += [f"{RESULTS}/released/{name}.parquet" for name in config["released"]]
    if "dapo" in config["datasets"]:
        targets.append(f"{RESULTS}/data/dapo_prompts.parquet")
    targets += [f"{RESULTS}/diagnose/{e}.json" for e in diagnosed_experiments()]
    targets += [f"{run_dir(r)}/summary.json" for r in runs()]
    targets += [f"{RESULTS}/rollouts/{r}/filter_stats.json" for r in config["rollouts"]]
    targets += [f"{RESULTS}/sft/{c}/summary.json" for c in config["cold_start"]]
    targets += [s for m in evaluated_models() for s in eval_summaries(m)]
    if config["groups"]:
        targets += [f"{RESULTS}/tables/README.md", f"{RESULTS}/figures/{next(iter(config['groups']))}.png"]
    if config["world"] == "tiny":
        targets += [f"{TINY_MODELS_DIR}/{m}.card.json" for m in tiny_models()]
        targets += [f"{RESULTS}/tables/tiny_models.md", f"{RESULTS}/tables/tiny_models.csv"]
        # the check compares against the pattern of the teacher whose rollouts it trained on
        targets += [f"{RESULTS}/sft/{c}/check.json" for c, spec in config["cold_start"].items()
                    if "rollouts" in spec]
    return targets


def rollouts_spec(name):
    return config["rollouts"][name]


def generation_params(spec, rule_name):
    """Settings of a generating job: its template resolved, the generation engine added."""
    return {**spec, "template": config["templates"][spec["template"]], **generation(rule_name)}


def rollouts_params(name):
    """A rollout set's settings with the generation engine, filters and template resolved."""
    return {**generation_params(config["rollouts"][name], "teacher_rollouts"),
            "filters": config["filters"]}


def generation(rule_name):
    """Generation engine settings for a rule; vLLM spans the job's GPUs unless set."""
    gen = dict(config["generation"])
    if gen["tensor_parallel_size"] is None:
        gen["tensor_parallel_size"] = max(1, int(res(rule_name, "gpu") or 0))
    return gen


def selection_params(name):
    return generation_params(config["prompt_selection"][name], "select_prompts")


def selection_student_input(name):
    student = config["prompt_selection"][name]["student"]
    return model_input(student) if student else []


def selection_student_arg(name):
    """`--student <location>`, shell-quoted, or nothing."""
    student = config["prompt_selection"][name]["student"]
    return shlex.join(["--student", model_arg(student)]) if student else ""


def rollout_shards(name):
    n = config["rollouts"][name]["shards"]
    return [f"{RESULTS}/rollouts/{name}/shard-{i}-of-{n}.parquet" for i in range(n)]


def cold_start_params(name):
    spec = dict(config["cold_start"][name])
    return {k: v for k, v in spec.items()
            if k not in ("student", "rollouts", "released", "accelerate_config")}


def cold_start_data(name):
    """A cold start's SFT set: the filtered rollouts built here, or a released set."""
    spec = config["cold_start"][name]
    if "released" in spec:
        return f"{RESULTS}/released/{spec['released']}.parquet"
    return f"{RESULTS}/rollouts/{spec['rollouts']}/sft.parquet"


def launcher(rule_name, accelerate_config=None):
    """`python` for one process, `accelerate launch` over the rule's GPUs for several."""
    gpus = int(res(rule_name, "gpu") or 0)
    if gpus <= 1:
        return "python"
    cmd = ["accelerate", "launch", "--num_processes", str(gpus)]
    if accelerate_config:
        cmd += ["--config_file", os.path.join(workflow.basedir, accelerate_config)]
    return shlex.join(cmd)


def evaluated_models():
    """Registry models listed under evaluation.models, then every run's final student."""
    return list(config["evaluation"]["models"]) + runs()


def eval_model_arg(name):
    """A registry model, or a run's final student (`<experiment>/seed<s>`)."""
    if name in config["models"]:
        return model_arg(name)
    student = config["models"][config["experiments"][os.path.dirname(name)]["student"]]
    return json.dumps({"name": name, "path": f"{run_dir(name)}/final",
                       "thinking": student["thinking"]})


def eval_model_input(name):
    if name in config["models"]:
        return model_input(name)
    return [f"{run_dir(name)}/final"]


def eval_params():
    cfg = dict(config["evaluation"])
    cfg.pop("models")
    cfg["template"] = config["templates"][cfg["template"]]
    return {**cfg, **generation("evaluate")}


def eval_summaries(name):
    return [f"{RESULTS}/eval/{name}/{b}.json" for b in config["benchmarks"]]


def grouped_experiments():
    return sorted({e for g in config["groups"].values() for e in g["experiments"]})


def group_metrics():
    """Each grouped experiment's training logs, by experiment and seed (inputs of the report
    rules)."""
    return {e: {str(s): f"{run_dir(run_name(e, s))}/metrics.jsonl" for s in seeds()}
            for e in grouped_experiments()}


def group_metric_files():
    return [path for per_seed in group_metrics().values() for path in per_seed.values()]


def group_evals():
    """Evaluation summaries of every run of a grouped experiment and of the student it
    started from, by model and benchmark (inputs of opd_tables)."""
    models = runs(grouped_experiments())
    models += sorted({config["experiments"][e]["student"] for e in grouped_experiments()})
    return {m: dict(zip(config["benchmarks"], eval_summaries(m))) for m in models}


def per_position_experiments():
    return sorted({e for g in config["groups"].values() if g["per_position"]
                   for e in g["experiments"]})
