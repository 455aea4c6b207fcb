"""`snakemake --profile slurm` against stand-in slurm commands: what each job asks for."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil

import yaml

from opd.core.config import validate

from conftest import REPO, cache_released, copy_workflow, run_snakemake

STUB = REPO / "tests/workflow/slurm_stub/stub.py"
COMMANDS = ("sbatch", "sacct", "squeue", "sinfo", "sacctmgr", "scontrol", "sshare", "scancel")


def _submissions(log):
    calls = [json.loads(ln) for ln in log.read_text().splitlines()]
    out = {}
    for c in calls:
        if c["cmd"] != "sbatch":
            continue
        args = c["args"]
        comment = args[args.index("--comment") + 1]
        rule = comment.removeprefix("rule_").split("_wildcards_")[0]
        out[rule] = args
    return out


def _flag(args, flag):
    """Value of `flag X` or `flag=X` in an sbatch call, else None."""
    for i, a in enumerate(args):
        if a == flag:
            return args[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def test_gpu_and_cpu_rules_are_submitted_with_their_resources(tmp_path, monkeypatch):
    (tmp_path / "wf").mkdir()
    work = copy_workflow(tmp_path / "wf")
    shutil.copytree(REPO / "slurm", work / "slurm")
    cfg_path = work / "config/paper.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["resources"]["default"].update(slurm_partition="cpu-part", slurm_account="proj")
    cfg["resources"]["rules"]["evaluate"] = {"threads": 8, "mem_mb": 64000, "runtime": 240,
                                             "gpu": 2, "gpu_model": "h100",
                                             "slurm_partition": "gpu-part"}
    cfg_path.write_text(yaml.safe_dump(cfg))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for cmd in COMMANDS:
        os.symlink(STUB, bin_dir / cmd)
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("SLURM_STUB_LOG", str(log))
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    # two jobs that are ready at once on the paper config: one GPU, one CPU
    offline = cache_released(work)
    for name in cfg["benchmarks"]:  # as fetched already, so the evaluation job is ready
        (work / "results/released").mkdir(parents=True, exist_ok=True)
        (work / f"results/released/{name}.parquet").touch()
    proc = run_snakemake(["--profile", "slurm", *offline, "--keep-going", "--retries", "0",
                          "--latency-wait", "1", "--slurm-init-seconds-before-status-checks", "1",
                          "results/eval/r1_distill_1p5b/aime24.json",
                          "results/data/openthoughts_sample.parquet"], work, timeout=600)
    subs = _submissions(log)
    assert set(subs) == {"evaluate", "sample_openthoughts"}, proc.stderr[-3000:]
    assert proc.returncode != 0  # the stand-in cluster fails every job

    gpu = subs["evaluate"]
    assert _flag(gpu, "--gpus") == "h100:2"
    assert _flag(gpu, "-p") == "gpu-part" and _flag(gpu, "-A") == "proj"
    assert _flag(gpu, "--mem") == "64000" and _flag(gpu, "-t") == "240"
    assert _flag(gpu, "--cpus-per-task") == "8"
    wrapped = _flag(gpu, "--wrap")
    assert "--target-jobs" in wrapped and "evaluate:model=r1_distill_1p5b" in wrapped

    cpu = subs["sample_openthoughts"]
    assert not any(a.startswith(("--gpus", "--gres")) for a in cpu), shlex.join(cpu)
    assert _flag(cpu, "-p") == "cpu-part" and _flag(cpu, "-A") == "proj"
    assert _flag(cpu, "--mem") == "16000" and _flag(cpu, "-t") == "240"


def test_profile_dry_run_lists_the_paper_dag_without_slurm(tmp_path):
    (tmp_path / "wf").mkdir()
    work = copy_workflow(tmp_path / "wf")
    shutil.copytree(REPO / "slurm", work / "slurm")
    cfg = yaml.safe_load((work / "config/paper.yaml").read_text())
    # offline, the released files are read from the cache (a dry run only checks they exist)
    proc = run_snakemake(["--profile", "slurm", "-n", *cache_released(work)], work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", proc.stdout, re.M))
    assert int(counts["fetch_released"]) == len(cfg["released"])
    # the memory plan of every GPU job is printed before the jobs
    assert "GPU memory plan (per GPU):" in proc.stderr
    assert proc.stderr.count("\n  opd_train ") == len(cfg["experiments"])
    # every experiment once per seed (the schema's three when the config names none)
    seeds = validate(cfg)["seeds"]
    assert len(seeds) >= 1
    assert int(counts["opd_train"]) == len(cfg["experiments"]) * len(seeds)
    # one diagnosis per distinct pair, prompt set and template (objective variants share it)
    pairs = {(e["student"], e["teacher"], e["prompts"], e.get("template", "default"))
             for e in cfg["experiments"].values()}
    assert int(counts["diagnose_pair"]) == len(pairs) < len(cfg["experiments"])
    assert int(counts["select_prompts"]) == len(cfg["prompt_selection"])
    assert int(counts["prepare_dapo"]) == 1
    assert int(counts["teacher_rollouts"]) == sum(r["shards"] for r in cfg["rollouts"].values())
    # every cold start, on rollouts built here or on a released SFT set
    assert int(counts["cold_start_sft"]) == len(cfg["cold_start"])
    sources = {"rollouts" if "rollouts" in c else "released" for c in cfg["cold_start"].values()}
    assert sources == {"rollouts", "released"}
    for rule in ("sample_openthoughts", "dedup_semantic", "filter_rollouts",
                 "evaluate", "opd_tables", "opd_figures"):
        assert int(counts[rule]) >= 1, rule
    assert "build_tiny" not in proc.stdout


def test_a_job_that_cannot_fit_stops_the_dry_run(tmp_path):
    (tmp_path / "wf").mkdir()
    work = copy_workflow(tmp_path / "wf")
    shutil.copytree(REPO / "slurm", work / "slurm")
    offline = cache_released(work)
    proc = run_snakemake(["--profile", "slurm", "-n", *offline, "--config",
                          "resources={default: {gpu: 0, gpu_memory_gb: 30}, "
                          "rules: {opd_train: {gpu: 8}}}"], work)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "GPU memory plan: these jobs do not fit" in out, out[-3000:]
    assert "opd_train justrl_to_r1_1p5b:" in out and "of 30 GiB" in out
    assert not (work / "results").exists()


def test_every_tiny_job_runs_on_a_fixed_thread_count_whatever_the_cores(tmp_path):
    """A model build's thread count can change how its sums round, and so the tiny models: a
    build computes on its recipe's threads and every other tiny job on one, so a machine's
    core count cannot change the world; the scheduler reserves a build's threads up to
    --cores."""
    work = copy_workflow(tmp_path)
    cfg = validate(yaml.safe_load((work / "config/config.yaml").read_text()))
    recipes = cfg["tiny_models"]["models"]
    assert {r["threads"] for r in recipes.values()} == {1, 2}   # the chain's builds take two
    printed = {}
    for cores in (4, 1):
        proc = run_snakemake(["-n", "-p", "--cores", str(cores)], work)
        assert proc.returncode == 0, proc.stderr[-3000:]
        jobs = proc.stdout.split("\nrule ")   # a job's block: rule, its details, its command
        builds = [j for j in jobs if j.startswith("build_tiny_models:")]
        params = {}
        for job in builds:
            argv = shlex.split(re.search(r"python -m .*", job).group(0))
            recipe = json.loads(argv[argv.index("--params") + 1])
            name = re.search(r"--out \S+/tiny/(\w+)", job).group(1)
            params[name] = recipe["threads"]
            scheduled = re.search(r"^\s+threads: (\d+)$", job, re.M)   # printed when above 1
            assert (int(scheduled.group(1)) if scheduled else 1) == min(recipe["threads"], cores)
            assert "--threads" not in job
        assert params == {name: r["threads"] for name, r in recipes.items()}
        threads = re.findall(r"--threads (\d+)", proc.stdout)
        assert threads and set(threads) == {"1"}   # every other model stage
        printed[cores] = sorted(re.findall(r"python -m .*", proc.stdout))
    assert printed[4] == printed[1]
