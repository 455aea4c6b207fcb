"""Config validation: both shipped configs pass, bad keys and types fail naming the key."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from opd.core.config import ConfigError, load, validate

from conftest import REPO, cache_released, copy_workflow, run_snakemake


@pytest.fixture(scope="module")
def tiny() -> dict:
    return yaml.safe_load((REPO / "config/config.yaml").read_text())


@pytest.mark.parametrize("name", ["config.yaml", "paper.yaml"])
def test_shipped_configs_validate(name):
    cfg = load(REPO / "config" / name)
    assert cfg["world"] in ("tiny", "paper")


def test_defaults_are_filled(tiny):
    cfg = validate(copy.deepcopy({"world": "tiny"}))
    assert cfg["opd"]["top_k"] == 16
    assert cfg["opd"]["lr"] == 1e-6
    assert cfg["opd"]["weight_decay"] == 0.01 and cfg["opd"]["updates_per_batch"] == 1
    assert cfg["opd"]["responses_per_prompt"] == 4 and cfg["opd"]["prompts_per_step"] == 64
    assert cfg["tiny_world"]["dapo"] == 400
    assert cfg["resources"]["default"]["gpu"] == 0


@pytest.mark.parametrize("mutate, key", [
    (lambda c: c.update(bogus=1), "bogus"),
    (lambda c: c["tiny_world"].update(dapoo=3), "tiny_world.dapoo"),
    (lambda c: c["tiny_world"].update(dapo="many"), "tiny_world.dapo"),
    (lambda c: c["tiny_world"].update(dapo=-1), "tiny_world.dapo"),
    (lambda c: c["opd"].update(lr=-1e-6), "opd.lr"),
    (lambda c: c["opd"].update(variant="forward"), "opd.variant"),
    (lambda c: c["tiny_models"]["models"]["base"].update(pattern="zigzag"),
     "tiny_models.models.base.pattern"),
    (lambda c: c["tiny_models"]["models"]["base"].update(arch="huge"),
     "tiny_models.models.base.arch"),
    (lambda c: c["tiny_models"]["models"]["student"].update(init="nobody"),
     "tiny_models.models.student.init"),
    (lambda c: c["tiny_models"]["models"]["student"].update(threads=0),
     "tiny_models.models.student.threads"),
    (lambda c: c["resources"]["rules"]["build_tiny_models"].update(threads=2),
     "resources.rules.build_tiny_models.threads"),
    (lambda c: c["datasets"].update(dapo={"path": "x", "hub_id": "y"}), "datasets.dapo"),
    (lambda c: c["experiments"]["strong_teacher"].update(teacher="nobody"),
     "experiments.strong_teacher.teacher"),
    (lambda c: c["experiments"]["strong_teacher"].update(prompts="nowhere"),
     "experiments.strong_teacher.prompts"),
    (lambda c: c["experiments"]["strong_teacher"].update(opd={"lrr": 1}),
     "experiments.strong_teacher.opd.lrr"),
    (lambda c: c["experiments"]["strong_teacher"].update(opd={"top_k": 0}),
     "experiments.strong_teacher.opd.top_k"),
    (lambda c: c.update(templates={"bad": "no placeholder"}), "templates.bad"),
    (lambda c: c["rollouts"]["mismatch_openthoughts"].update(teacher="nobody"),
     "rollouts.mismatch_openthoughts.teacher"),
    (lambda c: c["rollouts"]["mismatch_openthoughts"].update(shards=0),
     "rollouts.mismatch_openthoughts.shards"),
    (lambda c: c["cold_start"]["base_sft"].update(rollouts="none"), "cold_start.base_sft.rollouts"),
    (lambda c: c["cold_start"]["base_sft"].update(lr=-1.0), "cold_start.base_sft.lr"),
    (lambda c: c["models"].update(base_sft={"path": "elsewhere"}), "cold_start.base_sft"),
    (lambda c: c["evaluation"].update(models=["nobody"]), "evaluation.models"),
    (lambda c: c["generation"].update(engine="tgi"), "generation.engine"),
    (lambda c: c.update(filters={"line_repeats": 1}), "filters.line_repeats"),
    (lambda c: c["experiments"].update(base=c["experiments"]["strong_teacher"]),
     "experiments.base"),
    (lambda c: c["tiny_models"]["models"]["student"].update(ops=["+", "*"]),
     "tiny_models.models.student.ops"),
    (lambda c: c["tiny_models"]["models"]["student"].update(ops=["+", "-", "/"]),
     "tiny_models.models.student.ops"),
    (lambda c: c["prompt_selection"]["strong_gain"].update(teacher="nobody"),
     "prompt_selection.strong_gain.teacher"),
    (lambda c: c["prompt_selection"]["strong_gain"].update(prompts="nowhere"),
     "prompt_selection.strong_gain.prompts"),
    (lambda c: c["prompt_selection"]["strong_gain"].update(min_score=2),
     "prompt_selection.strong_gain.min_score"),
    (lambda c: c["opd"].update(generator="tgi"), "opd.generator"),
    (lambda c: c.update(released={"x": {"url": "https://h/x.parquet", "sha256": "0" * 64,
                                        "strip_template": "nope"}}), "released.x.strip_template"),
    (lambda c: c.update(released={"x": {"url": "http://h/x.parquet", "sha256": "0" * 64}}),
     "released.x.url"),
    (lambda c: c.update(released={"x": {"url": "https://h/x.parquet", "sha256": "abc"}}),
     "released.x.sha256"),
])
def test_bad_config_names_the_key(tiny, mutate, key):
    cfg = copy.deepcopy(tiny)
    mutate(cfg)
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert key in str(err.value)


@pytest.fixture()
def workdir(tmp_path) -> Path:
    return copy_workflow(tmp_path)


def test_dry_run_shows_the_tiny_dag(workdir):
    proc = run_snakemake(["-n", "--quiet", "rules"], workdir)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout + proc.stderr
    for rule in ("build_tiny_world", "build_tiny_tokenizer", "build_tiny_models",
                 "tiny_model_card", "tiny_models_table"):
        assert rule in out


def test_bad_config_stops_before_any_job(workdir):
    proc = run_snakemake(["--cores", "1", "--config", "tiny_world={'dapo': -5}"], workdir)
    assert proc.returncode != 0
    assert "tiny_world.dapo" in proc.stderr + proc.stdout
    assert not (workdir / "results").exists()


def test_paper_config_replaces_the_tiny_default(workdir):
    proc = run_snakemake(["-n", "--configfile", "config/paper.yaml",
                          *cache_released(workdir)], workdir)
    assert proc.returncode == 0, proc.stderr
    assert "build_tiny_world" not in proc.stdout  # the paper world builds no tiny data
    for rule in ("teacher_rollouts", "filter_rollouts", "cold_start_sft", "evaluate"):
        assert f"rule {rule}:" in proc.stdout, rule


@pytest.mark.parametrize("claim, message", [
    ({"op": "~"}, "needs a tolerance"),
    ({"op": ">", "tol": 0.1}, "applies to '~' only"),
])
def test_claims_follow_one_tolerance_rule(tiny, claim, message):
    for section in ("groups", "tiny_models"):
        cfg = copy.deepcopy(tiny)
        claims = (cfg["groups"][next(iter(cfg["groups"]))]["claims"] if section == "groups"
                  else cfg["tiny_models"]["checks"])
        claims[0].pop("tol", None)
        claims[0].update(claim)
        with pytest.raises(ConfigError, match=message):
            validate(cfg)


def test_numbers_given_as_strings_are_read_as_numbers(tiny):
    cfg = copy.deepcopy(tiny)
    cfg["opd"]["lr"] = "3e-4"                       # YAML 1.1 reads 3e-4 (no dot) as a string
    cfg["opd"]["top_k"] = "8"                        # nested --config overrides are strings
    cfg["tiny_world"]["dapo"] = " 12 "
    first = next(iter(cfg["experiments"]))
    cfg["experiments"][first].setdefault("opd", {})["lr"] = "0.001"
    out = validate(cfg)
    assert out["opd"]["lr"] == 3e-4 and isinstance(out["opd"]["lr"], float)
    assert out["opd"]["top_k"] == 8 and isinstance(out["opd"]["top_k"], int)
    assert out["tiny_world"]["dapo"] == 12
    assert out["experiments"][first]["opd"]["lr"] == 0.001


def test_booleans_given_as_strings_are_read_as_booleans(tiny):
    for text, value in (("true", True), ("False", False)):
        cfg = copy.deepcopy(tiny)
        cfg["offline"] = text                       # --config offline=true arrives as a string
        assert validate(cfg)["offline"] is value
    cfg = copy.deepcopy(tiny)
    cfg["offline"] = "yes please"
    with pytest.raises(ConfigError, match="offline: 'yes please' is not of type 'boolean'$"):
        validate(cfg)


@pytest.mark.parametrize("key, value", [("lr", "fast"), ("top_k", "2.5")])
def test_a_string_that_is_no_number_is_refused_with_a_hint(tiny, key, value):
    cfg = copy.deepcopy(tiny)
    cfg["opd"][key] = value
    with pytest.raises(ConfigError, match=rf"opd\.{key}: .*write a number"):
        validate(cfg)


def test_readme_override_examples_pass_the_dry_run(tmp_path):
    work = copy_workflow(tmp_path)
    for override in (["seeds=[0]"], ["seed=1"], ["opd={lr: 0.001}"],
                     ["opd={lr: 3e-4, top_k: 8}"]):
        proc = run_snakemake(["-n", "--quiet", "--config", *override], work)
        assert proc.returncode == 0, (override, proc.stderr[-2000:])


def test_hub_ids_are_checked_offline(tiny):
    cfg = copy.deepcopy(tiny)
    cfg["models"]["teacher_x"] = {"hub_id": "not a hub id"}
    with pytest.raises(ConfigError, match=r"models\.teacher_x\.hub_id"):
        validate(cfg)
